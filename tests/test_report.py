"""sweeper report and dashboard: a real scaled-down sweep whose trials end every way (complete,
pruned, failed), reported while it runs and after, opened in headless Chromium, and checked
against the MLflow runs."""

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from helpers import REPO, SWEEPER, chromium, free_port, sweeper_here, workers_of
from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunData, RunInfo, RunTag
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from sweeper.cli import main
from sweeper.ensemble.export import load_exported
from sweeper.report import studydata
from sweeper.report.render import load_dashboard, render
from sweeper.report.studydata import StudyData, _curves, _settings
from sweeper.stores import tracking
from sweeper.stores.paths import SweepPaths, default_tracking_uri
from sweeper.stores.tracking import queries

NAME = "reportcheck"
# Trial 0 completes; trial 1 diverges (FAIL); trial 2 learns nothing and is pruned after epoch 1
# by the median of trial 0; trials 3 and 4 go as the pruner sees them. A seed ensemble follows.
STUDY = f'''
from sweeper.spec.study import Study

FORCED = {{1: ("sgd", 1e4), 2: ("adam", 1e-7)}}


def space(trial):
    optimizer, lr = FORCED.get(trial.number, ("adam", None))
    if lr is None:
        lr = trial.suggest_float("lr", 1e-3, 3e-3, log=True)
    else:
        lr = trial.suggest_float("lr", lr, lr, log=True)
    batch_size = trial.suggest_categorical("batch_size", [64, 128])
    return {{"optimizer": optimizer, "lr": lr, "batch_size": batch_size}}


study = Study(
    name="{NAME}", space=space,
    fixed={{"model": "cnn2", "dataset": "cifar10", "val_size": 1000, "augment": False}},
    trials=4, epochs=2, patience=None, sampler="random",
    pruner="median", pruner_options={{"n_startup_trials": 1, "n_warmup_steps": 0}},
    ensemble={{"k": 2, "seeds": 1, "epochs": 1}},
)
'''


# Two small studies in one sweep directory to compare: different optimizers, and metrics.
COMPARED = {"cmpacc": ("adam", 1e-3, 3e-3, "val_acc"), "cmploss": ("sgd", 0.01, 0.05, "val_loss")}
COMPARED_STUDY = """
from sweeper.spec.study import Study


def space(trial):
    lr = trial.suggest_float("lr", {low}, {high}, log=True)
    return {{"optimizer": "{optimizer}", "lr": lr,
             "batch_size": trial.suggest_categorical("batch_size", [64, 128])}}


study = Study(
    name="{name}", space=space, metric="{metric}", trials=3, epochs=2, patience=None,
    sampler="random", pruner="none", ensemble={{}},
    fixed={{"model": "cnn2", "dataset": "cifar10", "val_size": 500, "augment": False}},
)
"""


def pause(pid: int) -> None:
    """SIGSTOP a worker outside any SQLite write (it holds no POSIX write lock), so the others
    go on: in write-ahead-log mode each open connection keeps read locks, which block nobody."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            time.sleep(0.01)
        locks = [
            line.replace("->", "").split() for line in Path("/proc/locks").read_text().splitlines()
        ]
        if not [f for f in locks if f[1] == "POSIX" and f[3] == "WRITE" and f[4] == str(pid)]:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} kept holding a database lock")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    """The sweep, and `running.html`: its report taken while trial 0 was running."""
    directory = tmp_path_factory.mktemp("report")
    study_file = directory / "study.py"
    study_file.write_text(STUDY)
    log = directory / "launch.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            [SWEEPER, "launch", str(study_file), "--dir", str(directory), "--workers", "1",
             "--train-size", "2000",
             "--val-size", "500", "--no-progress", "--data-dir", str(datasets_dir)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the same CPU trials everywhere
        )  # fmt: skip
    try:
        first = directory / "checkpoints" / NAME / "trial-0-last.pt"
        deadline = time.time() + 180
        while not first.exists():  # trial 0 is past its first epoch
            assert time.time() < deadline and launcher.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        (worker,) = workers_of(launcher.pid)
        pause(worker)  # hold trial 0 RUNNING while the report reads it
        try:
            running = sweeper_here("report", NAME, "--dir", str(directory),
                              "--out", str(directory / "running.html"))  # fmt: skip
        finally:
            os.kill(worker, signal.SIGCONT)
        assert running.returncode == 0, running.stderr[-3000:]
        assert launcher.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:  # a failed check: stop the sweep (it stops its workers)
            launcher.terminate()
            launcher.wait(timeout=60)
    written = (directory / "reports" / f"{NAME}-evaluation.html").read_text()
    assert "(finished; launch run FINISHED)" in written  # the launch's own page, at its end
    assert "The study is still running" not in written
    for dashboard in ("evaluation", "sweep"):
        done = sweeper_here("report", NAME, "--dir", str(directory), "--dashboard", dashboard)
        assert done.returncode == 0, done.stderr[-3000:]
    return directory


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    """Two real sweeps (3 trials x 2 epochs x 500 images each) in one directory, compared."""
    directory = tmp_path_factory.mktemp("compare")
    for name, (optimizer, low, high, metric) in COMPARED.items():
        study_file = directory / f"{name}.py"
        study_file.write_text(COMPARED_STUDY.format(
            name=name, optimizer=optimizer, low=low, high=high, metric=metric
        ))  # fmt: skip
        done = sweeper_here(
            "launch", str(study_file), "--dir", str(directory), "--workers", "1",
            "--train-size", "500",
            "--val-size", "500", "--no-progress", "--data-dir", str(datasets_dir),
            env={"CUDA_VISIBLE_DEVICES": ""},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    done = sweeper_here("report", *COMPARED, "--dir", str(directory))
    assert done.returncode == 0, done.stderr[-3000:]
    return directory


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def rendered(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran; no console message allowed."""
    done = chromium(page, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    return done.stdout


def plots_drawn(source: str, dom: str) -> list[str]:
    """The ids of the page's plots; each must hold the SVG that plotly draws into it."""
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div', source)
    for i, div_id in enumerate(ids):
        start = dom.index(f'id="{div_id}"')
        end = dom.index(f'id="{ids[i + 1]}"') if i + 1 < len(ids) else len(dom)
        assert 'class="main-svg"' in dom[start:end], f"plot {div_id} was not drawn"
    return ids


def screenshot(page: Path, tmp_path: Path, name: str, height: int) -> None:
    shot = tmp_path / name
    size = f"--window-size=1400,{height}"
    done = chromium(page, tmp_path / "shots", size, f"--screenshot={shot}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    shutil.copy(shot, REPO / ".pytest_cache" / name)  # the artifact to look at


def test_evaluation_report_renders_in_chromium(sweep: Path, tmp_path: Path) -> None:
    page = sweep / "reports" / f"{NAME}-evaluation.html"
    source = page.read_text()
    assert not re.search(r"<script[^>]+src=", source)  # plotly.js is embedded, once
    assert source.count(get_plotlyjs()[-2000:]) == 1
    dom = rendered(page, tmp_path)
    assert plots_drawn(source, dom) == ["curves-0", "curves-1"]
    table = dom[dom.index('<section id="table">') : dom.index('<section id="curves">')]
    header = re.findall(r"<th>(.*?)</th>", table)
    shown = [dict(zip(header, re.findall(r"<td>(.*?)</td>", tr), strict=True))
             for tr in re.findall(r'<tr class="[A-Z]+">(.*?)</tr>', table)]  # fmt: skip
    saved = rows(page.with_suffix(".csv"))
    assert [row["trial"] for row in shown] == [row["trial"] for row in saved]
    for row, csv_row in zip(shown, saved, strict=True):  # the page shows 4 significant digits
        for key in ("lr", "train_minutes", "val_acc"):
            assert row[key] == (f"{float(csv_row[key]):.4g}" if csv_row[key] else ""), key
        assert row["mlflow_run"].startswith(f'<a href="{csv_row["mlflow_run"]}">')
    for state in ("COMPLETE", "PRUNED", "FAIL"):
        assert f'<tr class="{state}">' in table
    assert "The study is still running" not in dom
    screenshot(page, tmp_path, "report-screenshot.png", 1800)


def test_sweep_report_renders_in_chromium(sweep: Path, tmp_path: Path) -> None:
    page = sweep / "reports" / f"{NAME}-sweep.html"
    source = page.read_text()
    dom = rendered(page, tmp_path)
    table = rows(sweep / "reports" / f"{NAME}-evaluation.csv")
    complete = sum(row["state"] == "COMPLETE" for row in table)
    expected = ["history", "importances", "parallel", "intermediate", "workers", "ensemble"]
    if complete < 2:  # the page says why instead
        expected.remove("importances")
    assert plots_drawn(source, dom) == [f"{name}-0" for name in expected]
    assert "ensemble (mean)" in dom
    screenshot(page, tmp_path, "report-sweep-screenshot.png", 3600)


def test_table_matches_the_mlflow_runs(sweep: Path) -> None:
    uri = default_tracking_uri(sweep)
    client = MlflowClient(tracking_uri=uri)
    table = rows(sweep / "reports" / f"{NAME}-evaluation.csv")
    runs = tracking.runs_of_study(uri, NAME).set_index("run_id", drop=False)
    assert len(table) == len(runs) == 5
    states = {int(row["trial"]): row["state"] for row in table}
    assert [states.pop(n) for n in (0, 1, 2)] == ["COMPLETE", "FAIL", "PRUNED"]
    assert set(states.values()) <= {"COMPLETE", "PRUNED"}  # trials 3 and 4: as the pruner saw
    for row in table:
        run = runs.loc[row["mlflow_run"].rsplit("/", 1)[1]]
        url = f"http://127.0.0.1:5000/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
        assert row["mlflow_run"] == url
        assert row["trial"] == run["tags.sweeper.trial"]
        assert row["state"] == run["tags.optuna.state"]
        params = {k.removeprefix("params."): v for k, v in run.items() if k.startswith("params.")}
        metrics = {
            k.removeprefix("metrics."): v for k, v in run.items() if k.startswith("metrics.")
        }
        for key in ("model", "optimizer", "batch_size", "activation", "init"):
            assert row[key] == params[key], key
        for key in ("lr", "weight_decay"):
            assert float(row[key]) == float(params[key]), key
        assert row["momentum"] == (params["momentum"] if params["optimizer"] == "sgd" else "")
        assert row["lr_decay"] == params["schedule"]
        assert row["gpu"] == ("yes" if run["tags.sweeper.device"].startswith("cuda") else "no")
        history = client.get_metric_history(run["run_id"], "val_acc")
        seconds = sum(m.value for m in client.get_metric_history(run["run_id"], "seconds"))
        if row["state"] == "FAIL":
            assert not history and row["val_acc"] == row["train_minutes"] == ""
            assert row["fail_reason"].startswith("diverged")
            continue
        assert float(row["val_acc"]) == metrics["best_val_acc"]
        assert int(row["best_epoch"]) == metrics["best_epoch"]
        assert int(row["epochs_run"]) == len(history) == (1 if row["state"] == "PRUNED" else 2)
        assert math.isclose(float(row["train_minutes"]), seconds / 60)


def test_report_of_a_running_study_says_so(sweep: Path) -> None:
    table = {row["trial"]: row for row in rows(sweep / "running.csv")}
    assert table["0"]["state"] == "RUNNING"
    page = (sweep / "running.html").read_text()
    assert "The study is still running (trials running now: 1)" in page
    assert "launch run RUNNING" in page


def test_report_is_logged_to_the_launch_run(sweep: Path) -> None:
    uri = default_tracking_uri(sweep)
    launch = queries.latest_run(uri, NAME, "launch")
    assert launch is not None
    client = MlflowClient(tracking_uri=uri)
    files = {a.path for a in client.list_artifacts(launch["run_id"], "report")}
    assert files == {
        f"report/{name}" for name in ("running.html", "running.csv", f"{NAME}-evaluation.html",
                                      f"{NAME}-evaluation.csv", f"{NAME}-sweep.html",
                                      f"{NAME}-sweep.csv")
    }  # fmt: skip


def test_a_broken_dashboard_is_one_line_naming_it(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = {
        "syntax.py": ("sections = [\n", ":1: syntax error"),
        "empty.py": ("title = 'nothing'\n", ": defines no `sections = [function, ...]`"),
        "raises.py": (
            "def table(data):\n    return data.settings['no such column']\n\nsections = [table]\n",
            ":2: section table(): KeyError",
        ),
        "wrong.py": ("def table(data):\n    return 42\n\nsections = [table]\n", "returned int"),
    }
    for name, (text, expected) in broken.items():
        path = tmp_path / name
        path.write_text(text)
        assert main(["report", NAME, "--dir", str(sweep), "--dashboard", str(path)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"sweeper: error: {path}") and expected in line, line
    assert main(["report", NAME, "--dir", str(sweep), "--dashboard", "nosuch"]) == 2
    assert "shipped: compare, evaluation, sweep" in capsys.readouterr().err


def test_compare_report_renders_in_chromium(compared: Path, tmp_path: Path) -> None:
    page = compared / "reports" / "cmpacc-vs-cmploss-compare.html"
    source = page.read_text()
    dom = rendered(page, tmp_path)
    assert plots_drawn(source, dom) == ["curves-0", "importances-0", "history-0"]
    assert "The studies optimize different metrics (cmpacc val_acc, cmploss val_loss)" in dom
    table = rows(page.with_suffix(".csv"))
    assert [row["study"] for row in table] == list(COMPARED)
    storage = f"sqlite:///{compared / 'optuna.db'}"
    for row in table:
        study = optuna.load_study(study_name=row["study"], storage=storage)
        assert row["metric"] == COMPARED[row["study"]][3]
        assert (row["complete"], row["pruned"], row["failed"]) == ("3", "0", "0")
        assert float(row["best_value"]) == study.best_trial.value
        assert int(row["best_trial"]) == study.best_trial.number
        assert float(row["lr"]) == study.best_trial.params["lr"]
        assert row["optimizer"] == COMPARED[row["study"]][0]
        assert float(row["train_minutes"]) > 0 and row["ensemble_test_acc"] == ""
        shown = dom.index(f"<td>{row['study']}</td><td>{row['metric']}</td>")
        assert dom.index('<section id="table">') < shown < dom.index('<section id="curves">')
    screenshot(page, tmp_path, "report-compare-screenshot.png", 2400)


def test_compare_report_is_logged_to_each_launch_run(compared: Path) -> None:
    uri = default_tracking_uri(compared)
    client = MlflowClient(tracking_uri=uri)
    for name in COMPARED:
        launch = queries.latest_run(uri, name, "launch")
        files = {a.path for a in client.list_artifacts(launch["run_id"], "report")}
        assert {"report/cmpacc-vs-cmploss-compare.html",
                "report/cmpacc-vs-cmploss-compare.csv"} <= files  # fmt: skip


def test_compare_mismatches_are_one_line(
    compared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        ("cmpacc", "--dashboard", "compare"): "dashboard compare.py compares studies; name two",
        ("cmpacc", "cmploss", "--dashboard", "sweep"): "dashboard sweep.py shows one study, not 2",
        ("cmpacc", "nosuch"): "no study 'nosuch' in sqlite:///",
        ("cmpacc", "cmpacc"): "a study is named twice",
    }
    for args, expected in cases.items():
        assert main(["report", *args, "--dir", str(compared)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("sweeper: error: ") and expected in line, line


def test_past_curves_read_the_rows_come_from_the_trials_and_say_the_same(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of trials: the report reads the runs of the best and running trials from
    MLflow, the others' columns from their trials (MLflow's search reads every param and tag of
    every run). On the real sweep (complete, failed, pruned), read both ways: the same rows."""
    paths = SweepPaths.existing(sweep)
    full = studydata.collect(NAME, paths, "http://m").settings
    monkeypatch.setattr(studydata, "CURVES_READ", 2)
    few = studydata.collect(NAME, paths, "http://m").settings
    columns = ["trial", "state", "device", "gpu", "best_epoch", "val_acc", "mlflow_run", "run_id"]
    assert len(full) == 5
    pd.testing.assert_frame_equal(few[columns], full[columns])
    assert few["train_minutes"].notna().sum() == full["train_minutes"].notna().sum()


def test_dashboard_serves_the_study_on_localhost(sweep: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [SWEEPER, "dashboard", NAME, "--dir", str(sweep), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.time() + 60
        while True:
            try:
                with direct.open(f"http://127.0.0.1:{port}/api/studies") as reply:
                    studies = json.load(reply)["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "no dashboard came up"
                time.sleep(0.5)
        (study,) = [s for s in studies if s["study_name"] == NAME]
        url = f"http://127.0.0.1:{port}/dashboard/studies/{study['study_id']}"
        assert url in server.stdout.readline()
        with direct.open(url) as reply:
            assert reply.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_continued_run_counts_for_the_retry_only() -> None:
    """A retry goes on in its first try's run: the run's numbers belong to the retry's row."""
    config = {"model": "vgg11", "batch_norm": True, "optimizer": "sgd", "lr": 0.05,
              "momentum": 0.9, "batch_size": 128, "schedule": "step",
              "milestones": [0.5, 0.75], "gamma": 0.1}  # fmt: skip
    attrs = {"mlflow_run_id": "r1", "config": config, "worker": "w0"}
    first = create_trial(state=TrialState.FAIL, user_attrs={**attrs, "interrupted": "yes"})
    retry = create_trial(value=0.5, user_attrs=attrs, system_attrs={"failed_trial": 0})
    retry.number = 1
    run = Run(
        RunInfo("r1", "7", "", "FINISHED", 0, 1, "active"),
        RunData(
            metrics=[Metric("best_val_acc", 0.5, 0, 0), Metric("best_epoch", 2, 0, 0)],
            tags=[RunTag("sweeper.trial", "1"), RunTag("sweeper.device", "cuda:0")],
        ),
    )
    runs = queries.runs_frame([run])
    histories = pd.DataFrame(
        [("r1", "val_acc", 1, 0.4), ("r1", "val_acc", 2, 0.5),
         ("r1", "seconds", 1, 30.0), ("r1", "seconds", 2, 30.0)],
        columns=["run_id", "key", "step", "value"],
    )  # fmt: skip
    curves = _curves([first, retry], runs, histories)
    assert list(curves["trial"]) == [1, 1]
    first_row, retry_row = _settings([first, retry], runs, curves, "http://m").to_dict("records")
    assert first_row["mlflow_run"] == retry_row["mlflow_run"] == "http://m/#/experiments/7/runs/r1"
    assert first_row["fail_reason"] == "interrupted by Ctrl-C or SIGTERM"
    assert math.isnan(first_row["val_acc"]) and math.isnan(first_row["train_minutes"])
    assert retry_row["val_acc"] == 0.5 and retry_row["best_epoch"] == 2
    assert retry_row["train_minutes"] == 1.0 and retry_row["epochs_run"] == 2
    assert retry_row["retry_of"] == 0 and retry_row["gpu"] == "yes"
    assert retry_row["model"] == "vgg11 (bn)" and retry_row["momentum"] == 0.9
    assert retry_row["lr_decay"] == "step x0.1 at 0.5, 0.75 of the epochs"


def test_past_curves_read_the_report_reads_the_best_and_running_curves_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of trials: a call per run and metric would take minutes, and no page draws
    them; the others' rows still get their epochs and minutes (from the last epoch's pace)."""
    monkeypatch.setattr(studydata, "CURVES_READ", 3)
    trials, runs = [], []
    for number, value in enumerate([0.7, 0.9, 0.7, 0.7, 0.1, None]):  # ties: the first first
        attrs = {"mlflow_run_id": f"r{number}", "config": {"model": "cnn2"}, "epochs_run": 4}
        if value is None:
            trial = create_trial(state=TrialState.RUNNING, user_attrs=attrs)
        else:
            trial = create_trial(value=value, user_attrs=attrs)
        trial.number = number
        trials.append(trial)
        runs.append(Run(RunInfo(f"r{number}", "7", "", "FINISHED", 0, 1, "active"),
                        RunData(metrics=[Metric("seconds", 15.0, 0, 4)],
                                tags=[RunTag("sweeper.trial", str(number)),
                                      RunTag("sweeper.device", "cpu")])))  # fmt: skip
    frame = queries.runs_frame(runs)
    assert set(studydata._curves_to_read(trials, frame, maximize=True)) == {"r1", "r0", "r2", "r5"}
    assert set(studydata._curves_to_read(trials, frame, maximize=False)) == {"r4", "r0", "r2", "r5"}
    histories = pd.DataFrame([("r1", "val_acc", 1, 0.9), ("r1", "seconds", 1, 20.0)],
                             columns=["run_id", "key", "step", "value"])  # fmt: skip
    curves = _curves(trials, frame, histories)
    rows = _settings(trials, frame, curves, "http://m").set_index("trial")
    assert rows.loc[1, "epochs_run"] == 1 and rows.loc[1, "train_minutes"] == 20 / 60  # read
    assert rows.loc[0, "epochs_run"] == 4 and rows.loc[0, "train_minutes"] == 1.0  # 4 x 15 s


def empty_study(name: str) -> StudyData:
    runs = queries.runs_frame([])
    curves = _curves([], runs, pd.DataFrame(columns=["run_id", "key", "step", "value"]))
    return StudyData(
        name=name, study=optuna.create_study(study_name=name, direction="maximize"), trials=[],
        settings=_settings([], runs, curves, "http://m"), curves=curves, launch=None,
        ensemble=None, members=None, collected=datetime.now(),
    )  # fmt: skip


@pytest.mark.parametrize("dashboard", ["evaluation", "sweep"])
def test_a_study_without_trials_renders(dashboard: str) -> None:
    page, table = render(load_dashboard(dashboard), empty_study("empty"))
    assert "empty" in page and (table is None or table.empty)


def test_studies_without_trials_compare() -> None:
    page, table = render(load_dashboard("compare"), [empty_study("one"), empty_study("two")])
    assert "No complete trial yet in one, two." in page
    assert "two: needs two complete trials or more." in page
    assert list(table["study"]) == ["one", "two"] and table["best_value"].isna().all()


def test_an_accuracy_against_size_study_keeps_and_draws_its_pareto_front(
    tmp_path: Path, datasets_dir: Path
) -> None:
    """studies/pareto.py at a small scale: every trial scored on val_acc and on its parameter
    count, the launch naming the front, the report drawing it with a row per trial on it."""
    done = sweeper_here(
        "launch", str(REPO / "studies" / "pareto.py"), "--dir", str(tmp_path), "--workers", "1",
        "--trials", "4", "--epochs", "1", "--train-size", "500",
        "--val-size", "500", "--no-progress",
        "--data-dir", str(datasets_dir), env={"CUDA_VISIBLE_DEVICES": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="pareto", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.metric_names == ["val_acc", "params"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(len(t.values) == 2 for t in complete)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for trial in complete:  # the parameter count is the model's, as its MLflow run records it
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.values[1] == trial.user_attrs["costs"]["params"] == run.data.metrics["params"]
        assert trial.values[0] == run.data.metrics["best_val_acc"]
    front = sorted(t.number for t in study.best_trials)
    names = ", ".join(map(str, front))
    assert f"  Pareto front of val_acc against params: trials {names} (the report" in done.stdout
    page = tmp_path / "reports" / "pareto-evaluation.html"
    source = page.read_text()
    dom = rendered(page, tmp_path)
    assert plots_drawn(source, dom) == ["pareto-1", "curves-0", "curves-1"]
    section = dom[dom.index('<section id="pareto">') : dom.index('<section id="curves">')]
    body = section[section.index("<tbody>") :]
    assert len(re.findall(r"<tr>", body)) == len(front)  # a row per trial on the front

    for trial in study.best_trials:  # the retention rule keeps the front's weights for --pick
        assert tracking.checkpoint_size(
            default_tracking_uri(tmp_path), trial.user_attrs["checkpoint"]
        )
    # The smallest model within 100 points is the smallest of all; within 0, the best one's.
    smallest = min(complete, key=lambda t: t.values[1])
    best = max(complete, key=lambda t: t.values[0])
    for rule, chosen in (("smallest within 100", smallest), ("smallest within 0", best)):
        out = tmp_path / f"{rule.replace(' ', '-')}.onnx"
        exported = sweeper_here("export", "pareto", "--dir", str(tmp_path), "--pick", rule,
                           "--format", "onnx", "--out", str(out))  # fmt: skip
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert f"exported pareto@trial {chosen.number} ({rule}: val_acc=" in exported.stdout
        model, classes = load_exported(out)
        assert model(np.zeros((2, 3, 32, 32), np.float32)).shape == (2, len(classes)) == (2, 10)
    for rule, said in (("biggest within 1", "say 'smallest within POINTS'"),
                       ("fastest within 1", "needs a study scored on latency_ms")):  # fmt: skip
        refused = sweeper_here("export", "pareto", "--dir", str(tmp_path), "--pick", rule,
                          "--format", "onnx", "--out", str(tmp_path / "no.onnx"))  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert said in refused.stderr
