"""Best-of seed ensembles: which configs to retrain with which seeds.

The members are trials of a second Optuna study, `<study>.ensemble`, with every (source trial,
seed) pair queued up front: the pool trains them with the sweep's heartbeats, retries,
checkpoints and tracking (see sweep.ensemble). Workers read the plan stored with that study.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from sweeper.errors import SweeperError
from sweeper.records import Attr, StudyAttr, member_run_name, member_study_name
from sweeper.spec.objectives import metric_value, pick_rule, ranked, within
from sweeper.spec.study import Study


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
        if trial.params not in [t.params for t in top] and Attr.CONFIG in trial.user_attrs:
            top.append(trial)
        if len(top) == k:
            break
    return EnsemblePlan(
        sources=[t.number for t in top],
        seeds=list(range(seeds)),
        configs={str(t.number): t.user_attrs[Attr.CONFIG] for t in top},
        values={str(t.number): metric_value(t) for t in top},
        asked_k=k,
    )


def member_study(base: Study, plan: EnsemblePlan, epochs: int | None = None) -> Study:
    """A Study whose trials are the ensemble's members: a source config with another seed."""

    def space(trial: optuna.Trial) -> dict[str, Any]:
        source = trial.suggest_categorical("source_trial", plan.sources)
        seed = trial.suggest_categorical("seed", plan.seeds)
        trial.set_user_attr(Attr.RUN_NAME, member_run_name(source, seed))  # its MLflow run's
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
    return member_study(base, EnsemblePlan(**attrs[StudyAttr.PLAN]), attrs.get(StudyAttr.EPOCHS))


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
        stored = old.user_attrs
        if stored.get(StudyAttr.PLAN) == asdict(plan) and stored[StudyAttr.EPOCHS] == spec.epochs:
            return old
        optuna.delete_study(study_name=name, storage=storage)
    members = optuna.create_study(study_name=name, storage=storage, direction=spec.direction)
    members.set_user_attr(StudyAttr.PLAN, asdict(plan))
    members.set_user_attr(StudyAttr.EPOCHS, spec.epochs)
    sources = {t.number: t for t in swept.get_trials(deepcopy=False)}
    choices = {"source_trial": plan.sources, "seed": plan.seeds}
    for source, seed in itertools.product(plan.sources, plan.seeds):
        params, trial = {"source_trial": source, "seed": seed}, sources[source]
        if not is_source_as_is(spec, trial, seed, overrides, tracking_uri):
            members.enqueue_trial(params)
            continue
        kept = (Attr.CHECKPOINT, Attr.MLFLOW_RUN_ID, Attr.CONFIG)
        attrs = {key: trial.user_attrs[key] for key in kept}
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
    from sweeper.stores import tracking  # MLflow: the launcher needs it only from here on
    from sweeper.training.loop import resolved  # torch: the launcher needs it only from here on

    trained = source.user_attrs[Attr.CONFIG]
    member = resolved(spec.config({**trained, "seed": seed}, overrides)).to_dict()
    same = all(member[k] == v for k, v in trained.items() if k not in ("device", "threads"))
    kept = tracking.checkpoint_size(tracking_uri, source.user_attrs.get(Attr.CHECKPOINT, ""))
    return same and kept is not None
