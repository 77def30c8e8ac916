"""Every name sweeper records under, in one place: the Optuna trial and study attributes, the
MLflow tags and kinds of run, the artifact paths, the checkpoint files and what a best
checkpoint holds. Readers and writers grep to the same constants (as Ray Tune's result keys)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any


class Attr:
    """User attributes of an Optuna trial."""

    CONFIG = "config"  # the TrainConfig the trial ran, as a dict (auto settings decided)
    MLFLOW_RUN_ID = "mlflow_run_id"  # its MLflow run (a retry goes on in its first try's)
    RUN_NAME = "run_name"  # an ensemble member's MLflow run name
    WORKER = "worker"
    NODE = "node"  # the Ray node id, else the host name
    SAMPLER = "sampler"  # the sampler's class name
    RESUMED_FROM_EPOCH = "resumed_from_epoch"
    CURVE = "curve"  # {epoch: metric}, for the median rule of multi-objective studies
    TRAIN_STATUS = "train_status"  # completed, early_stopped, diverged
    BEST_EPOCH = "best_epoch"
    EPOCHS_RUN = "epochs_run"
    COSTS = "costs"  # {cost: value} of a study scored on cost
    CHECKPOINT = "checkpoint"  # its best weights: runs:/RUN_ID/checkpoints/... or a local path
    FAIL_REASON = "fail_reason"
    INTERRUPTED = "interrupted"  # stopped by Ctrl-C or SIGTERM: its retry resumes it
    SURPLUS = "surplus"  # a claim that lost the race for the last place of the budget
    OOM_RETRIED_ALONE = "oom_retried_alone"
    WARM_START = "warm_start"  # where a queued warm-start config came from
    PACE = "pace"  # {images_per_s, epoch_s, device}: early in its first epoch, then at its end


class StudyAttr:
    """User attributes of an Optuna study."""

    STUDY_FILE = "study_file"
    STUDY_FILE_HASH = "study_file_hash"
    PLAN = "plan"  # an ensemble's member study: its EnsemblePlan as a dict
    EPOCHS = "epochs"  # an ensemble's member study: the members' epoch budget
    # What the last whole pass of retention left: {"through": N, "kept": [numbers]}; every trial
    # numbered N or less but the kept ones has no best weights left to free
    FREED = "freed"


# Optuna's own system attribute on a retried trial: the number of the trial it retries.
RETRY_OF_SYSTEM_ATTR = "failed_trial"


class Tag:
    """Tags of sweeper's MLflow runs."""

    KIND = "sweeper.kind"  # see Kind
    STUDY = "sweeper.study"
    TRIAL = "sweeper.trial"  # the trial a run counts for (a retry's, once it took the run over)
    RETRY_OF = "sweeper.retry_of"
    WORKER = "sweeper.worker"
    WORKERS = "sweeper.workers"  # a launch's number of workers
    DEVICE = "sweeper.device"
    HOST = "sweeper.host"
    NODE = "sweeper.node"
    PID = "sweeper.pid"  # a launch run's launcher process
    SEED = "sweeper.seed"
    SPLIT_HASH = "sweeper.split_hash"
    STUDY_FILE_HASH = "sweeper.study_file_hash"
    FAIL_REASON = "sweeper.fail_reason"
    STOPPED_BECAUSE = "sweeper.stopped_because"
    NOTE = "sweeper.note"
    SOURCE_TRIAL = "sweeper.source_trial"  # an ensemble member's source trial
    ENSEMBLE_RUN = "sweeper.ensemble_run"  # the ensemble run a member belongs to
    CREATE_TOKEN = "sweeper.create_token"  # one per create_run call: finds a run created twice
    OPTUNA_STATE = "optuna.state"


class Kind:
    """Values of Tag.KIND."""

    LAUNCH = "launch"  # the parent run of one launch
    TRIAL = "trial"
    MEMBER = "ensemble_member"  # a trial of an ensemble's member study
    ENSEMBLE = "ensemble"  # the evaluated, registered ensemble


class Artifact:
    """Artifact paths in sweeper's MLflow runs."""

    CONFIG = "config.json"  # a trial's TrainConfig
    CONFUSION_COUNTS = "plots/confusion_matrix.json"  # logged by the worker
    CONFUSION_FIGURE = "plots/confusion_matrix.png"  # drawn from the counts by the launcher
    CHECKPOINTS = "checkpoints"  # a trial's best weights: checkpoints/trial-N-best.pt
    ENSEMBLE_MODEL = "ensemble"  # the ensemble run's MLflow model
    ENSEMBLE_TABLE = "ensemble_members.json"  # the member table (an MLflow table)
    ENSEMBLE_MEMBERS = "members.json"  # the member runs
    REPORT = "report"  # report pages logged to a launch run


CHECKPOINT_FILE = re.compile(r"trial-(\d+)-(last|best)\.pt")


def epoch_file_name(number: int) -> str:
    """A try's epoch checkpoint: everything to resume after its last finished epoch."""
    return f"trial-{number}-last.pt"


def best_file_name(number: int) -> str:
    """A trial's best weights, with what it takes to rebuild and feed the model."""
    return f"trial-{number}-best.pt"


def member_run_name(source: int, seed: int) -> str:
    return f"member-of-trial-{source}-seed-{seed}"


def member_study_name(name: str) -> str:
    """The Optuna study whose trials are the ensemble members of study `name`."""
    return f"{name}.ensemble"


@dataclass
class BestWeights:
    """What a best checkpoint (trial-N-best.pt) holds: loaded with torch.load(weights_only=True),
    so plain tensors, lists, dicts and numbers only."""

    model: dict[str, Any]  # the state_dict, on the CPU
    config: dict[str, Any]  # the TrainConfig
    classes: list[str]
    in_channels: int
    image_size: int
    mean: Any  # a tensor [C]: input normalization
    std: Any

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def missing(cls, saved: Any) -> list[str]:
        """The keys a loaded file lacks to be a best checkpoint (all of them if not a dict)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return [k for k in names if not isinstance(saved, dict) or k not in saved]

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> BestWeights:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})
