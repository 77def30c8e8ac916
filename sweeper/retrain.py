"""Best-of seed ensembles: which configs to retrain with which seeds, and the members' results.

The members are trials of a second Optuna study, `<study>.ensemble`, with every (source trial,
seed) pair queued up front: the pool trains them with the sweep's heartbeats, retries,
checkpoints and tracking (see launch.build_ensemble).
"""

from __future__ import annotations

import itertools
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeper import tracking
from sweeper.config import TrainConfig
from sweeper.data import split_of
from sweeper.errors import SweeperError
from sweeper.objectives import metric_value, pick_rule, ranked, within
from sweeper.paths import SweepPaths
from sweeper.study import Study

MEMBER_KIND = "ensemble_member"


@dataclass
class EnsembleSettings:
    """A study's `ensemble = {...}`: k configs x seeds, retrained; greedy selection on val."""

    k: int = 3
    seeds: int = 3
    epochs: int | None = None  # members' epochs; None: the study's
    greedy: bool = False
    # a study scored on cost: members from the Pareto front within the rule's points of the best
    pick: str | None = None


@dataclass
class EnsemblePlan:
    """The configs to retrain and their seeds; stored with the member study (as JSON)."""

    sources: list[int]  # trial numbers of the top-k distinct configs, best first
    seeds: list[int]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(trial) -> config
    values: dict[str, float] = field(default_factory=dict)  # str(trial) -> objective value
    asked_k: int = 0

    @property
    def size(self) -> int:
        return len(self.sources) * len(self.seeds)


def member_study_name(name: str) -> str:
    return f"{name}.ensemble"


def make_plan(
    optuna_study: optuna.Study, k: int, seeds: int, pick: str | None = None
) -> EnsemblePlan:
    """The top-k distinct configs by the metric, each to be retrained with `seeds` seeds; with a
    pick rule ("smallest within 1.0"), only from the Pareto front's trials within its points."""
    done = optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if pick:
        _, points = pick_rule(pick, optuna_study.metric_names or [])
        front = {t.number for t in optuna_study.best_trials}
        done = [t for t in within(optuna_study, points) if t.number in front]
    if not done:
        raise SweeperError(
            f"ensemble: study '{optuna_study.study_name}' has no complete trial; launch it first"
        )
    top: list[optuna.trial.FrozenTrial] = []
    for trial in ranked(done, optuna_study):
        if trial.params not in [t.params for t in top] and "config" in trial.user_attrs:
            top.append(trial)
        if len(top) == k:
            break
    return EnsemblePlan(
        sources=[t.number for t in top],
        seeds=list(range(seeds)),
        configs={str(t.number): t.user_attrs["config"] for t in top},
        values={str(t.number): metric_value(t) for t in top},
        asked_k=k,
    )


def member_study(base: Study, plan: EnsemblePlan, epochs: int | None = None) -> Study:
    """A Study whose trials are the ensemble's members: a source config with another seed."""

    def space(trial: optuna.Trial) -> dict[str, Any]:
        source = trial.suggest_categorical("source_trial", plan.sources)
        seed = trial.suggest_categorical("seed", plan.seeds)
        trial.set_user_attr("run_name", f"member-of-trial-{source}-seed-{seed}")  # its MLflow run's
        return {**plan.configs[str(source)], "seed": seed}

    return Study(
        name=member_study_name(base.name),
        space=space,
        metric=base.metric,
        trials=plan.size,
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
    return member_study(base, EnsemblePlan(**attrs["plan"]), attrs.get("epochs"))


def open_member_study(
    spec: Study,
    storage: optuna.storages.BaseStorage,
    swept: optuna.Study,
    plan: EnsemblePlan,
    overrides: dict[str, Any],
    tracking_uri: str,
) -> optuna.Study:
    """The member study of `spec` (see member_study): every (source, seed) pair queued, unless
    the source trial itself is that member; replanned if the top configs changed."""
    name = spec.name
    if name in [s.study_name for s in optuna.get_all_study_summaries(storage)]:
        old = optuna.load_study(study_name=name, storage=storage)
        if old.user_attrs.get("plan") == asdict(plan) and old.user_attrs["epochs"] == spec.epochs:
            return old
        optuna.delete_study(study_name=name, storage=storage)
    members = optuna.create_study(study_name=name, storage=storage, direction=spec.direction)
    members.set_user_attr("plan", asdict(plan))
    members.set_user_attr("epochs", spec.epochs)
    sources = {t.number: t for t in swept.get_trials(deepcopy=False)}
    choices = {"source_trial": plan.sources, "seed": plan.seeds}
    for source, seed in itertools.product(plan.sources, plan.seeds):
        params, trial = {"source_trial": source, "seed": seed}, sources[source]
        if not is_source_as_is(spec, trial, seed, overrides, tracking_uri):
            members.enqueue_trial(params)
            continue
        attrs = {key: trial.user_attrs[key] for key in ("checkpoint", "mlflow_run_id", "config")}
        distributions = {k: CategoricalDistribution(v) for k, v in choices.items()}
        members.add_trial(create_trial(params=params, distributions=distributions,
                                       value=trial.value, user_attrs=attrs))  # fmt: skip
    return members


def is_source_as_is(
    spec: Study, source: FrozenTrial, seed: int, overrides: dict, tracking_uri: str
) -> bool:
    """Whether a member would train exactly what its source trial did (config, data, epochs;
    where it runs aside) and its best weights are kept: then the source trial, checkpoint and
    run, is that member."""
    from sweeper.train import resolved  # torch: the launcher needs it only from here on

    trained = source.user_attrs["config"]
    member = resolved(spec.config({**trained, "seed": seed}, overrides)).to_dict()
    same = all(member[k] == v for k, v in trained.items() if k not in ("device", "threads"))
    kept = tracking.checkpoint_size(tracking_uri, source.user_attrs.get("checkpoint", ""))
    return same and kept is not None


def finish_ensemble(
    study: Study,
    paths: SweepPaths,
    members: optuna.Study,
    plan: EnsemblePlan,
    experiment_id: str,
    parent_run_id: str | None,
    greedy: bool,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate the finished members on the test split; log, register and report the ensemble."""
    from sweeper.ensemble import evaluate  # torch: the launcher needs it only from here on

    uri = paths.tracking_uri
    done = [
        t
        for t in members.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if tracking.checkpoint_size(uri, t.user_attrs.get("checkpoint", "")) is not None
    ]
    if not done:
        raise SweeperError("ensemble: no member finished; see `sweeper status` for the reasons")
    data = split_of(TrainConfig.from_dict(done[0].user_attrs["config"]))
    with tempfile.TemporaryDirectory(prefix="sweeper-members-") as downloads:  # a remote store's
        labelled = [
            (f"trial {t.params['source_trial']}",
             tracking.fetch_checkpoint(uri, t.user_attrs["checkpoint"], Path(downloads)))
            for t in done
        ]  # fmt: skip
        ensemble, report = evaluate(labelled, (data.val_x, data.val_y), (data.test_x, data.test_y),
                                    device=device, greedy=greedy)  # fmt: skip
    ensemble.input_shape = (data.in_channels, data.image_size)  # for exports of the model
    missing = plan.size - len(done)
    note = f"{missing} member(s) missing (failed or unfinished)" if missing else None
    member_runs = [
        {
            "run_id": t.user_attrs["mlflow_run_id"],
            "source_trial": t.params["source_trial"],
            "seed": t.params["seed"],
        }
        for t in done
    ]
    result = tracking.log_ensemble(
        paths.tracking_uri, experiment_id, parent_run_id, study.name, report=report,
        member_runs=member_runs, model=ensemble, example=data.test_x[:4], note=note,
    )  # fmt: skip
    result["exports"] = export_files(ensemble, paths.exports(study.name), result["version"])
    _print_report(report, result, note)
    return {**result, "report": report, "members": len(done)}


def export_files(ensemble: Any, folder: Path, version: str) -> list[Path]:
    """The registered ensemble as TorchScript and ONNX files, named by its version."""
    import torch

    from sweeper.export import export

    channels, size = ensemble.input_shape
    example = torch.rand(2, channels, size, size)
    return [export(ensemble, fmt, folder / f"ensemble-v{version}{suffix}", example)
            for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx"))]  # fmt: skip


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
