"""Best-of seed ensembles: retrain the top configs with several seeds on the pool, then combine.

The members are trials of a second Optuna study, `<study>.ensemble`, with every (source trial,
seed) pair queued up front: they get the pool's heartbeats, retries, checkpoints and tracking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sweeper import tracking
from sweeper.errors import SweeperError
from sweeper.study import Study

MEMBER_KIND = "ensemble_member"


def member_study_name(name: str) -> str:
    return f"{name}.ensemble"


def make_plan(optuna_study: optuna.Study, k: int, seeds: int) -> dict[str, Any]:
    """The top-k distinct configs by the objective, each to be retrained with `seeds` seeds."""
    done = [t for t in optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        raise SweeperError(
            f"ensemble: study '{optuna_study.study_name}' has no complete trial; launch it first"
        )
    reverse = optuna_study.direction == optuna.study.StudyDirection.MAXIMIZE
    top: list[optuna.trial.FrozenTrial] = []
    for trial in sorted(done, key=lambda t: t.value, reverse=reverse):
        if trial.params not in [t.params for t in top] and "config" in trial.user_attrs:
            top.append(trial)
        if len(top) == k:
            break
    return {
        "sources": [t.number for t in top],
        "seeds": list(range(seeds)),
        "configs": {str(t.number): t.user_attrs["config"] for t in top},
        "values": {str(t.number): t.value for t in top},
        "asked_k": k,
    }


def member_study(base: Study, plan: dict[str, Any], epochs: int | None = None) -> Study:
    """A Study whose trials are the ensemble's members: a source config with another seed."""

    def space(trial: optuna.Trial) -> dict[str, Any]:
        source = trial.suggest_categorical("source_trial", plan["sources"])
        seed = trial.suggest_categorical("seed", plan["seeds"])
        return {**plan["configs"][str(source)], "seed": seed}

    return Study(
        name=member_study_name(base.name),
        space=space,
        metric=base.metric,
        trials=len(plan["sources"]) * len(plan["seeds"]),
        epochs=epochs or base.epochs,
        patience=base.patience,
        sampler="random",
        pruner="none",
        file=base.file,
        file_hash=base.file_hash,
    )


def load_member_study(base: Study, storage: optuna.storages.BaseStorage) -> Study:
    """What a `sweeper worker --ensemble` runs: the plan stored by the launcher."""
    try:
        stored = optuna.load_study(study_name=member_study_name(base.name), storage=storage)
    except KeyError:
        raise SweeperError(
            f"ensemble: no ensemble planned for '{base.name}'; run `sweeper ensemble` first"
        ) from None
    attrs = stored.user_attrs
    return member_study(base, attrs["plan"], attrs.get("epochs"))


def build_ensemble(
    study: Study,
    sweep: Any,
    optuna_study: optuna.Study,
    *,
    devices: list[str],
    experiment_id: str,
    parent_run_id: str | None,
    overrides: dict[str, Any],
    progress: bool,
    k: int = 3,
    seeds: int = 3,
    epochs: int | None = None,
    greedy: bool = False,
) -> bool:
    """Plan, retrain the members on the pool, evaluate on the test split, log and register."""
    from sweeper.pool import budget_state, run_pool

    plan = make_plan(optuna_study, k, seeds)
    members = _open_member_study(study, optuna_study, plan, epochs)
    spec = member_study(study, plan, epochs)
    short = len(plan["sources"]) < k
    print(
        f"ensemble: retraining trials {plan['sources']} with seeds {plan['seeds']}"
        + (f" (only {len(plan['sources'])} distinct complete configs)" if short else "")
    )
    member_overrides = {key: v for key, v in overrides.items() if key != "epochs"}
    context = {"experiment_id": experiment_id, "parent_run_id": parent_run_id}
    if not run_pool(spec, sweep, lambda: (members, context), devices=devices, budget=spec.trials,
                    deadline=None, overrides=member_overrides, extra=["--ensemble"],
                    progress=progress):  # fmt: skip
        return False
    if budget_state(members, spec.trials) != "done":
        print("ensemble: some members did not finish; building from those that did")
    device = devices[0] if devices[0].startswith("cuda") else "cpu"
    finish_ensemble(study, sweep, members, plan, experiment_id, parent_run_id, greedy, device)
    return True


def _open_member_study(
    study: Study, optuna_study: optuna.Study, plan: dict[str, Any], epochs: int | None
) -> optuna.Study:
    """Create the member study with every (source, seed) pair queued; replan if the top changed."""
    name = member_study_name(study.name)
    storage = optuna_study._storage
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name in existing:
        old = optuna.load_study(study_name=name, storage=storage)
        if old.user_attrs.get("plan") == plan and old.user_attrs.get("epochs") == epochs:
            return old
        optuna.delete_study(study_name=name, storage=storage)
    members = optuna.create_study(study_name=name, storage=storage, direction=study.direction)
    members.set_user_attr("plan", plan)
    members.set_user_attr("epochs", epochs)
    for source in plan["sources"]:
        for seed in plan["seeds"]:
            members.enqueue_trial({"source_trial": source, "seed": seed})
    return members


def finish_ensemble(
    study: Study,
    sweep: Any,
    members: optuna.Study,
    plan: dict[str, Any],
    experiment_id: str,
    parent_run_id: str | None,
    greedy: bool,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate the finished members on the test split; log, register and report the ensemble."""
    from sweeper.data import load_images, split
    from sweeper.ensemble import evaluate
    from sweeper.train import TrainConfig

    done = [
        t
        for t in members.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if Path(t.user_attrs.get("checkpoint", "")).is_file()
    ]
    if not done:
        raise SweeperError("ensemble: no member finished; see `sweeper status` for the reasons")
    config = TrainConfig.from_dict(done[0].user_attrs["config"])
    images = load_images(config.dataset, config.data_dir, config.image_size)
    data = split(images, config.val_size, config.train_size, config.split_seed)
    labelled = [
        (f"trial {t.params['source_trial']}", Path(t.user_attrs["checkpoint"])) for t in done
    ]
    ensemble, report = evaluate(
        labelled, (data.val_x, data.val_y), (data.test_x, data.test_y), device=device, greedy=greedy
    )
    ensemble.input_shape = (
        data.in_channels,
        data.image_size,
    )  # for exports of the registered model
    missing = len(plan["sources"]) * len(plan["seeds"]) - len(done)
    note = f"{missing} member(s) missing (failed or unfinished)" if missing else None
    result = tracking.log_ensemble(
        sweep.tracking_uri,
        experiment_id,
        parent_run_id,
        study.name,
        report=report,
        member_runs=[
            {
                "run_id": t.user_attrs["mlflow_run_id"],
                "source_trial": t.params["source_trial"],
                "seed": t.params["seed"],
            }
            for t in done
        ],
        model=ensemble,
        example=data.test_x[:4],
        note=note,
    )
    _print_report(report, result, note)
    return result


def _print_report(report: Any, result: dict[str, Any], note: str | None) -> None:
    print("ensemble on the test split:")
    for label, (mean, std) in report.groups.items():
        print(f"  {label}: {mean:.4f} ± {std:.4f} over seeds")
    print(
        f"  best member {report.best_member_test_acc:.4f}, ensemble {report.ensemble_test_acc:.4f}"
        f" ({report.gain:+.4f})"
    )
    if report.greedy_test_acc is not None:
        print(f"  greedy selection {report.greedy_test_acc:.4f}")
    champion = " (new champion)" if result.get("champion") else ""
    print(f"  registered as {result['model_name']} version {result['version']}{champion}")
    if note:
        print(f"  note: {note}")
