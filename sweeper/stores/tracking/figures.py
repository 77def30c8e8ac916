"""The launcher draws each finished trial's confusion matrix from the counts its worker logged.

matplotlib takes about half a second a figure on a CPU: in a worker that is half a second of
every trial on the sweep's critical path; in the launcher, which only waits for its workers, it
is time nobody waits for."""

from __future__ import annotations

import heapq
import json
import math
import tempfile
import time
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException

from sweeper.records import Artifact, Attr
from sweeper.stores.tracking.client import RetryingClient
from sweeper.stores.tracking.plots import confusion_matrix
from sweeper.stores.tracking.runs import warn_on_error

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class FigureDrawer:
    """Called once per poll of the launcher's loop, and once after it: draws the figures of the
    best `top` finished trials, each run once, as they become so (a study of thousands of
    trials would otherwise keep the launcher drawing; every run keeps its counts,
    `plots/confusion_matrix.json`). A poll's call draws for at most `budget_s` (at least one
    figure), so the poll stays quick; `final` draws all that are left."""

    def __init__(self, tracking_uri: str, budget_s: float = 0.5, top: int = 10) -> None:
        self.client = RetryingClient(tracking_uri)
        self.drawn: set[str] = set()
        self.budget_s, self.top = budget_s, top

    def __call__(
        self, study: optuna.Study, final: bool = False, trials: list | None = None
    ) -> None:
        """`trials`: the study's trials as the caller just read them (else read here)."""
        started = time.monotonic()
        if trials is None:
            trials = study.get_trials(deepcopy=False)
        finished = [t for t in trials if t.state in FINISHED]
        sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1

        def rank(t: optuna.trial.FrozenTrial) -> float:  # best first
            return sign * t.values[0] if t.values else math.inf

        best = heapq.nsmallest(self.top, finished, key=rank)  # no sort of thousands a poll
        for trial in best:
            run_id = trial.user_attrs.get(Attr.MLFLOW_RUN_ID)
            if run_id is None or run_id in self.drawn:
                continue
            self.drawn.add(run_id)
            with warn_on_error("confusion matrix", run_id):
                confusion = self.counts(run_id)
                if confusion is not None:
                    figure = confusion_matrix(confusion["counts"], confusion["classes"])
                    self.client.log_figure(run_id, figure, Artifact.CONFUSION_FIGURE)
            if not final and time.monotonic() - started > self.budget_s:
                return  # the next poll goes on

    def counts(self, run_id: str) -> dict | None:
        """What the worker logged; None for a run without counts (its trial never validated)."""
        with tempfile.TemporaryDirectory() as scratch:
            try:
                file = self.client.download_artifacts(run_id, Artifact.CONFUSION_COUNTS, scratch)
            except (MlflowException, OSError):
                return None
            return json.loads(Path(file).read_text())
