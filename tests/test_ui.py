"""`sweeper ui` on a real small sweep: the page it prints shows, in headless Chromium, a row per
trial, each trial's best_val_acc and the val_acc charts; SIGTERM stops every process it started."""

import os
import re
import select
import signal
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

from helpers import (
    QUICKSTART,
    SWEEPER,
    chromium,
    descendants,
    free_port,
    processes_mentioning,
    running,
    sweeper_here,
)
from mlflow import MlflowClient

from sweeper.stores.paths import default_tracking_uri

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
CELLS = {"cell", "gridcell", "columnheader"}


class Rows(HTMLParser):
    """The elements with role="row" of a page: their attributes and the texts of their cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict, list[str]]] = []
        self.open: list[str | None] = []  # the role of each open element

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in VOID:
            return
        found = dict(attrs)
        role = found.get("role")
        if role == "row":
            self.rows.append((found, []))
        elif role in CELLS and "row" in self.open:
            self.rows[-1][1].append("")
        self.open.append(role)

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID and self.open:
            self.open.pop()

    def handle_data(self, data: str) -> None:
        if self.rows and any(role in CELLS for role in self.open) and self.rows[-1][1]:
            self.rows[-1][1][-1] += data


def printed_url(ui: subprocess.Popen, timeout: float = 120) -> str:
    ready, _, _ = select.select([ui.stdout], [], [], timeout)
    assert ready, "sweeper ui printed no URL"
    line = ui.stdout.readline()
    match = re.search(r"http://\S+", line)
    assert match, (line, ui.stderr.read() if ui.poll() is not None else "")
    return match.group(0)


def rendered(url: str, tmp_path: Path, names: list[str]) -> str:
    """The page's DOM once its charts are drawn (the UI loads in steps: tried up to 3 times)."""
    for attempt in range(3):
        done = chromium(url, tmp_path / f"profile-{attempt}", "--window-size=1600,1400",
                        "--dump-dom", budget_ms=60_000)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        if all(f"{name} (val_acc)" in text_of(done.stdout) for name in names):
            return done.stdout
    return done.stdout


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_ui_lands_on_the_trials_and_stops_all_it_started(tmp_path: Path, datasets_dir: Path):
    sweep_dir = tmp_path / "sweep"
    launched = sweeper_here("launch", QUICKSTART, "--dir", str(sweep_dir), "--trials", "2",
                            "--epochs", "2", "--train-size", "500",
                            "--val-size", "500", "--no-progress", "--no-ensemble",
                            "--data-dir", str(datasets_dir))  # fmt: skip
    assert launched.returncode == 0, launched.stderr[-3000:]
    client = MlflowClient(tracking_uri=default_tracking_uri(sweep_dir))
    (experiment,) = [e for e in client.search_experiments() if e.name == "quickstart"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'trial'")
    trials = {run.info.run_name: run for run in runs}
    assert sorted(trials) == ["trial-0", "trial-1"]

    port, started = free_port(), []
    ui = subprocess.Popen([SWEEPER, "ui", "--dir", str(sweep_dir), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = printed_url(ui)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.status == 200
        started = descendants(ui.pid)
        assert len(started) >= 2  # mlflow ui and its uvicorn server
        dom = rendered(url, tmp_path, list(trials))
        check_rows(dom, trials)
        check_val_acc_chart(dom, list(trials))
    finally:
        ui.send_signal(signal.SIGTERM)
        _, err = ui.communicate(timeout=60)
        left = [pid for pid in started if running(pid)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == [] and processes_mentioning(str(sweep_dir)) == []
    assert err.strip() == "sweeper: interrupted", err
    assert ui.returncode == 130


def check_rows(dom: str, trials: dict) -> None:
    """A row per trial in the run list; each trial's best_val_acc in its column of the table."""
    parser = Rows()
    parser.feed(dom)
    rows = [(attrs, [cell.strip() for cell in cells]) for attrs, cells in parser.rows]
    for name, run in trials.items():
        cells = [c for attrs, c in rows if attrs.get("row-id") == run.info.run_id]
        assert any(name in " ".join(c) for c in cells), f"no row of {name} in the run list"
    (header,) = [c for _, c in rows if c[1:2] == ["Compare by"]]
    columns = {name: i for i, cell in enumerate(header) for name in trials if cell.endswith(name)}
    assert sorted(columns) == sorted(trials), header
    best = {name: run.data.metrics["best_val_acc"] for name, run in trials.items()}
    values = [c for _, c in rows if c[1:2] == ["best_val_acc"]]
    if len(set(best.values())) == 1:  # the table shows only what differs between the trials
        assert values == [], values
        return
    (row,) = values
    for name, value in best.items():
        assert abs(float(row[columns[name]]) - value) <= 0.005, (name, row, value)


def check_val_acc_chart(dom: str, names: list[str]) -> None:
    """The val_acc card holds a drawn plot: a line per trial (2 epochs each), each named."""
    cards = dom.split('data-testid="experiment-view-compare-runs-card"')[1:]
    (card,) = [c for c in cards if f"{names[0]} (val_acc)" in text_of(c)]
    assert 'class="main-svg"' in card
    assert all(f"{name} (val_acc)" in text_of(card) for name in names)
    lines = re.findall(r'<path class="js-line" d="M[^"]*L[^"]*"', card)
    assert len(lines) >= len(names), lines
