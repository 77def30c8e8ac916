from pathlib import Path

import pytest
from helpers import QUICKSTART, REPO, sweeper

from sweeper.errors import SweeperError
from sweeper.study import load_study

GOOD_SPACE = (
    'def space(trial):\n    return {"model": "cnn2", "lr": trial.suggest_float("lr", 1e-3, 1e-1)}\n'
)
HEADER = "from sweeper.study import Study\n"


@pytest.mark.parametrize("name", ["quickstart", "vgg", "resnet", "lenet", "mlp", "cnn"])
def test_shipped_studies_load(name: str) -> None:
    study = load_study(REPO / "studies" / f"{name}.py")
    assert study.name == name and len(study.file_hash) == 12


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("study = Study(name='x', space=space\n", ":8: syntax error"),
        ("x = 1\n", "defines no `study = Study("),
        ("study = Study(name='x', space=space, sampler='tpee')", "sampler='tpee' is invalid"),
        ("study = Study(name='x', space=space, pruner='mean')", "pruner='mean' is invalid"),
        ("study = Study(name='x', space=space, trails=3)", ":8: TypeError"),
        ("study = Study(name='x', space=space, trials=0)", "trials=0 is invalid"),
        ("study = Study(name='x', space=bad)", "unknown model 'vgg15'"),
        ("study = Study(name='x', space=bad_opt)", "optimizer='adamm' is invalid"),
        ("study = Study(name='x', space=space, fixed={'lrr': 1})", "unknown key 'lrr'"),
        ("study = Study(name='x', space=space, sampler='grid')", "needs sampler_options"),
    ],
)
def test_broken_study_files_fail_with_one_line(tmp_path: Path, body: str, expected: str) -> None:
    extra = (
        "def bad(trial):\n    return {'model': trial.suggest_categorical('m', ['cnn2', 'vgg15'])}\n"
        "def bad_opt(trial):\n    return {'optimizer': 'adamm'}\n"
    )
    path = tmp_path / "broken.py"
    path.write_text(HEADER + GOOD_SPACE + extra + body + "\n")  # the body is line 8
    with pytest.raises(SweeperError) as error:
        load_study(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_launch_of_a_broken_study_exits_2_before_any_worker(tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text(HEADER + "def space(trial):\n    return {'model': 'resnet7'}\n"
                    "study = Study(name='x', space=space)\n")  # fmt: skip
    done = sweeper("launch", str(path), "--dir", str(tmp_path / "sweep"), timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "resnet7" in done.stderr
    assert not (tmp_path / "sweep" / "optuna.db").exists()


def test_bad_storage_url_is_one_line(tmp_path: Path) -> None:
    done = sweeper("launch", QUICKSTART, "--storage",
                   "postgresql://postgres:secret@127.0.0.1:1/none", timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--storage: cannot open" in done.stderr and "secret" not in done.stderr
