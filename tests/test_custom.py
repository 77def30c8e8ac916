"""End to end: a network written in the study file, trained on data from a function of arrays,
through everything sweeper does with a zoo model: 2 workers, a worker killed and its trial
resumed, the seed ensemble, TorchScript and ONNX exports, `sweeper predict`; and a registered
model whose builder's file changed is refused."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import optuna
import torch
from helpers import (
    FINISHED,
    SWEEPER,
    TINY,
    command_line,
    descendants,
    first_epoch_checkpoint,
    sweeper,
    sweeper_here,
)
from PIL import Image

from sweeper.ensemble.export import load_exported
from sweeper.stores import tracking
from sweeper.stores.paths import default_tracking_uri
from sweeper.stores.storage import make_storage

STUDY = '''
import numpy as np
from torch import nn

from sweeper import Study
from sweeper.training.data import load_images


def separable(width: int, num_classes: int, in_channels: int) -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.Conv2d(cin, cout, 1),
                nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), *block(width, 2 * width),
                         *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))


def cifar_arrays(data_dir):
    """A user's own arrays: channels last, floats 0..1, labels and class names."""
    images = load_images("cifar10", data_dir)
    train, test = (np.random.default_rng(0).permutation(len(y))[:n]
                   for y, n in ((images.train_y, 3000), (images.test_y, 1000)))
    nhwc = lambda x: (x.transpose(0, 2, 3, 1) / 255).astype(np.float32)
    return (nhwc(images.train_x[train]), images.train_y[train], nhwc(images.test_x[test]),
            images.test_y[test], images.classes)


def space(trial):
    return {"model": separable, "width": trial.suggest_categorical("width", [8, 16]),
            "lr": trial.suggest_float("lr", 0.02, 0.1, log=True), "batch_size": 64}


study = Study(name="mine", space=space, fixed={"dataset": cifar_arrays, "val_size": 500,
              "augment": False}, trials=3, epochs=3, patience=None, pruner="none",
              ensemble={"k": 1, "seeds": 2})
'''


def stored(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="mine", storage=make_storage(f"sqlite:///{sweep_dir / 'optuna.db'}")
    )


def kill_a_worker_past_its_first_epoch(sweep_dir: Path, launcher: subprocess.Popen) -> int:
    """SIGKILL the worker of the first trial that saved an epoch checkpoint; its number."""
    number = first_epoch_checkpoint(sweep_dir, launcher, "mine")
    worker = stored(sweep_dir).trials[number].user_attrs["worker"]
    named = f"--worker-name {worker} "
    (pid,) = [p for p in descendants(launcher.pid) if named in command_line(p)]
    os.kill(pid, signal.SIGKILL)
    return number


def test_your_own_network_and_data_sweep_resume_ensemble_export_and_predict(
    tmp_path: Path, datasets_dir: Path
) -> None:
    study_file = tmp_path / "mine.py"
    study_file.write_text(STUDY)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "SWEEPER_HEARTBEAT_S": "1", "SWEEPER_GRACE_S": "4"}
    launcher = subprocess.Popen(
        [SWEEPER, "launch", str(study_file), "--dir", str(sweep_dir), "--workers", "2",
         "--data-dir", str(datasets_dir), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        killed = kill_a_worker_past_its_first_epoch(sweep_dir, launcher)
    finally:
        _, err = launcher.communicate(timeout=900)
    assert launcher.returncode == 0, err[-3000:]

    trials = stored(sweep_dir)
    finished = [t for t in trials.trials if t.state.name in FINISHED]
    assert len(finished) == 3
    (retry,) = [t for t in trials.trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state.name in FINISHED and retry.user_attrs["resumed_from_epoch"] >= 1
    config = retry.user_attrs["config"]
    assert config["model"] == f"{study_file.resolve()}:separable"
    assert config["model_args"] == {"width": retry.params["width"]}
    assert config["dataset"] == f"{study_file.resolve()}:cifar_arrays"
    uri = default_tracking_uri(sweep_dir)
    runs = tracking.runs_of_study(uri, "mine")
    assert set(runs["params.width"].dropna()) <= {"8", "16"}  # the builder's option, a param

    # the ensemble: registered, exported, and both exports compute what it computes
    ensemble = tracking.load_registered(uri, "mine", "champion")
    assert ensemble.classes[:2] == ["airplane", "automobile"]  # the data function's names
    assert len(ensemble.members) == 2
    images = np.random.default_rng(0).random((64, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = ensemble(torch.from_numpy(images)).numpy()
    exports = sweep_dir / "exports" / "mine"
    for suffix in (".pt", ".onnx"):
        run, classes = load_exported(exports / f"ensemble-v1{suffix}")
        assert np.abs(run(images) - expected).max() < 1e-4, suffix
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((images[i].transpose(1, 2, 0) * 255).astype(np.uint8)).save(
            folder / f"{i}.png"
        )
    predicted = sweeper_here("predict", str(exports / "ensemble-v1.pt"), str(folder))
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[1] in ensemble.classes for line in lines), lines

    # the builder's file changes: its registered models are refused, in one line
    study_file.write_text(STUDY + "\n# a wider net next time\n")
    refused = sweeper_here("export", "mine", "--dir", str(sweep_dir), "--format", "onnx",
                           "--out", str(tmp_path / "again.onnx"))  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "has changed since this model was trained" in refused.stderr
    assert str(study_file.resolve()) in refused.stderr


def test_a_trial_whose_builder_fails_fails_in_one_line_and_the_sweep_goes_on(
    tmp_path: Path, datasets_dir: Path
) -> None:
    study_file = tmp_path / "flaky.py"
    study_file.write_text(
        "from torch import nn\nfrom sweeper import Study\n\n"
        "def net(width, num_classes, in_channels):\n"
        "    if width == 4:\n        raise ValueError('width 4 is too narrow')\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 32 * 32, num_classes))\n\n"
        "def space(trial):\n    return {'model': net, 'width': 4 if trial.number == 0 else 8}\n\n"
        "study = Study(name='flaky', space=space, fixed={'val_size': 500}, trials=1)\n"
    )
    done = sweeper("launch", str(study_file), "--dir", str(tmp_path / "sweep"), "--workers", "1",
                   "--data-dir", str(datasets_dir), *TINY)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "net(width=4) raised ValueError: width 4 is too narrow (" in done.stderr
    assert "Traceback" not in done.stderr
    trials = optuna.load_study(study_name="flaky", storage=make_storage(
        f"sqlite:///{tmp_path / 'sweep' / 'optuna.db'}")).trials  # fmt: skip
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("net(width=4) raised ValueError")
