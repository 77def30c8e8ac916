import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, sweeper_here

from sweeper.pool import local as pool


@pytest.mark.e2e
def test_train_json_reports_every_key(datasets_dir: Path) -> None:
    done = sweeper_here(
        "train",
        "--model",
        "cnn2",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(datasets_dir),
        "--epochs",
        "2",
        "--train-size",
        "1000",
        "--val-size",
        "500",
        "--batch-size",
        "100",
        "--lr",
        "0.001",
        "--optimizer",
        "adam",
        "--seed",
        "3",
        "--device",
        "cpu",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert {
        "config",
        "status",
        "history",
        "best_epoch",
        "best_val_acc",
        "test_acc",
        "seconds",
    } <= set(report)
    assert report["status"] == "completed" and report["config"]["seed"] == 3
    assert [row["epoch"] for row in report["history"]] == [1, 2]
    assert set(report["history"][0]) >= {
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
        "images_per_s",
    }
    assert 0 < report["test_acc"] < 1 and 0 < report["best_val_acc"] < 1


@pytest.mark.e2e
def test_train_from_a_config_file_prints_accuracies(datasets_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: mlp\nhidden: [64]\ndata_dir: {datasets_dir}\ntrain_size: 500\nval_size: 500\n"
        "epochs: 1\nimage_size: 16\n"
    )
    done = sweeper_here("train", "--config", str(config), "--lr", "0.01")
    assert done.returncode == 0, done.stderr
    assert "validation accuracy:" in done.stdout and "test accuracy:" in done.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "vgg15"], "model: unknown model 'vgg15'; accepted: mlp"),
        (["--activation", "relux"], "activation"),
        (["--lr", "-1"], "lr=-1.0 is invalid; it must be greater than 0"),
        (["--batch-size", "0"], "batch_size=0 is invalid"),
        (["--data-dir", "NOWHERE", "--dataset", "mnist"], "put the MNIST"),
        (["--config", "CONFIG"], "unknown key 'learning_rate'"),
        (["--device", "cuda:7"], "device"),
    ],
)
def test_wrong_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rate: 0.1\n")
    nowhere = tmp_path / "no" / "data"
    args = [{"CONFIG": str(config), "NOWHERE": str(nowhere)}.get(a, a) for a in args]
    done = sweeper_here("train", "--epochs", "1", "--train-size", "100", *args)
    assert not (tmp_path / "no").exists()  # a failed download leaves no folder behind
    assert done.returncode == 2
    assert expected in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


def test_the_cli_checks_a_study_without_importing_torch_or_mlflow() -> None:
    """A launcher starts its workers first and loads MLflow meanwhile; `status` stays instant."""
    code = (
        "import sys; from sweeper import cli; from sweeper.training import data;"
        " from sweeper.sweep import launch; from sweeper.pool import local, ray;"
        " from sweeper.spec import study; cli.build_parser(); study.load_study('studies/vgg.py');"
        " print(sorted({'torch', 'mlflow', 'matplotlib'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "[]", done.stderr


def test_a_gpu_machine_whose_torch_sees_no_gpu_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    driver = tmp_path / "nvidiactl"  # as if the driver were installed
    driver.touch()
    monkeypatch.setattr(pool, "GPU_DRIVER_FILES", (str(driver),))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # torch sees no GPU, here and on a GPU host
    assert pool.default_devices(None, 1) == ["cpu"]
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "torch sees no GPU" in note
    assert "CUDA_VISIBLE_DEVICES=)" in note and "the workers train on the CPU" in note
