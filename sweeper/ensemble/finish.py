"""The end of an ensemble: its finished members evaluated on the test split, the ensemble
logged, registered and exported."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from sweeper.ensemble.evaluate import Ensemble, EnsembleReport, evaluate
from sweeper.ensemble.export import export
from sweeper.ensemble.plan import EnsemblePlan
from sweeper.errors import SweeperError
from sweeper.records import Attr
from sweeper.spec.study import Study
from sweeper.stores import tracking
from sweeper.stores.paths import SweepPaths
from sweeper.training.config import TrainConfig
from sweeper.training.data import split_of


@dataclass
class EnsembleResult:
    """A built ensemble: its MLflow run, registered version and exports, and its report."""

    run_id: str
    model_name: str
    version: str
    champion: bool  # the alias `champion` moved to this version
    exports: list[Path]  # TorchScript and ONNX files
    report: EnsembleReport
    members: int  # members that finished


def finish_ensemble(
    spec: Study,
    paths: SweepPaths,
    members: optuna.Study,
    plan: EnsemblePlan,
    experiment_id: str,
    parent_run_id: str | None,
    greedy: bool,
    device: str = "cpu",
) -> EnsembleResult:
    """Evaluate the finished members on the test split; log, register and report the ensemble."""
    uri = paths.tracking_uri
    done = [
        t
        for t in members.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if tracking.checkpoint_size(uri, t.user_attrs.get(Attr.CHECKPOINT, "")) is not None
    ]
    if not done:
        raise SweeperError("ensemble: no member finished; see `sweeper status` for the reasons")
    data = split_of(TrainConfig.from_dict(done[0].user_attrs[Attr.CONFIG]))
    with tempfile.TemporaryDirectory(prefix="sweeper-members-") as downloads:  # a remote store's
        labelled = [
            (f"trial {t.params['source_trial']}",
             tracking.fetch_checkpoint(uri, t.user_attrs[Attr.CHECKPOINT], Path(downloads)))
            for t in done
        ]  # fmt: skip
        ensemble, report = evaluate(labelled, (data.val_x, data.val_y), (data.test_x, data.test_y),
                                    device=device, greedy=greedy)  # fmt: skip
    ensemble.input_shape = (data.in_channels, data.image_size)  # for exports of the model
    missing = plan.size - len(done)
    note = f"{missing} member(s) missing (failed or unfinished)" if missing else None
    member_runs = [
        {"run_id": t.user_attrs[Attr.MLFLOW_RUN_ID], "source_trial": t.params["source_trial"],
         "seed": t.params["seed"]}
        for t in done
    ]  # fmt: skip
    logged = tracking.log_ensemble(
        paths.tracking_uri, experiment_id, parent_run_id, spec.name, report=report,
        member_runs=member_runs, model=ensemble, example=data.test_x[:4], note=note,
    )  # fmt: skip
    exports = export_files(ensemble, paths.exports(spec.name), logged.version)
    result = EnsembleResult(logged.run_id, logged.model_name, logged.version, logged.champion,
                            exports, report, len(done))  # fmt: skip
    _print_report(result, note)
    return result


def export_files(ensemble: Ensemble, folder: Path, version: str) -> list[Path]:
    """The registered ensemble as TorchScript and ONNX files, named by its version."""
    channels, size = ensemble.input_shape
    example = torch.rand(2, channels, size, size)
    return [export(ensemble, fmt, folder / f"ensemble-v{version}{suffix}", example)
            for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx"))]  # fmt: skip


def _print_report(result: EnsembleResult, note: str | None) -> None:
    report = result.report
    print("ensemble on the test split:")
    for label, (mean, std) in report.groups.items():
        print(f"  {label}: {mean:.4f} ± {std:.4f} over seeds")
    print(
        f"  best member {report.best_member_test_acc:.4f}, ensemble {report.ensemble_test_acc:.4f}"
        f" ({report.gain:+.4f})"
    )
    if report.greedy_test_acc is not None:
        print(f"  greedy selection {report.greedy_test_acc:.4f}")
    champion = " (new champion)" if result.champion else ""
    print(f"  registered as {result.model_name} version {result.version}{champion}")
    if note:
        print(f"  note: {note}")
