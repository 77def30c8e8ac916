"""Headless Chromium on a finished bench/scale.py study (issue 24): do its report pages open, and
does the MLflow UI's shared view list the runs sorted by the metric?

    .venv/bin/python bench/scale_browser.py FOLDER [--study scale]

FOLDER is a `--dir` that bench/scale.py left (its path is in /tmp/scale-N-*). For each page of
FOLDER/reports: its size, the seconds Chromium took to load it and run its scripts, how many of
its plots were drawn and the console messages. Then `sweeper ui`: the seconds until the landing
page (sweeper's view) was drawn, the runs it lists and whether their best_val_acc, read from
MLflow, is in descending order.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the suite's Chromium and its parser of the UI's rows

from helpers import SWEEPER, chromium, free_port  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from test_ui import Rows, printed_url  # noqa: E402

from sweeper.stores.paths import default_tracking_uri  # noqa: E402


def page_opens(page: Path, profile: Path) -> str:
    """One table row: the page, its size, Chromium's seconds, plots drawn, console messages."""
    source = page.read_text()
    started = time.perf_counter()
    done = chromium(page, profile, "--enable-logging=stderr", "--v=0", "--dump-dom",
                    budget_ms=30_000)  # fmt: skip
    seconds = time.perf_counter() - started
    plots = re.findall(r'<div id="([^"]+)" class="plotly-graph-div', source)
    drawn = done.stdout.count('class="main-svg"')
    console = sum(":CONSOLE" in line for line in done.stderr.splitlines())
    return (f"| {page.name} | {page.stat().st_size / 2**20:.1f} MB | {seconds:.1f} s |"
            f" exit {done.returncode}, {len(done.stdout) / 2**20:.1f} MB of DOM |"
            f" {min(drawn, len(plots))} of {len(plots)} | {console} |")  # fmt: skip


def ui_sorted(folder: Path, study: str, profile: Path) -> str:
    """`sweeper ui` drawn in Chromium: seconds, rows listed, whether sorted by best_val_acc."""
    port = free_port()
    ui = subprocess.Popen([SWEEPER, "ui", study, "--dir", str(folder), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = printed_url(ui, timeout=300)
        started = time.perf_counter()
        done = chromium(url, profile, "--window-size=1600,1400", "--dump-dom", budget_ms=60_000)
        seconds = time.perf_counter() - started
    finally:
        ui.terminate()
        ui.communicate(timeout=60)
    parser = Rows()
    parser.feed(done.stdout)
    listed = list(
        dict.fromkeys(a["row-id"] for a, _ in parser.rows if len(a.get("row-id", "")) == 32)
    )  # run ids, not "load_more"
    client = MlflowClient(default_tracking_uri(folder))
    experiment = client.get_experiment_by_name(study)
    best = {}
    for run_id in listed:
        best[run_id] = client.get_run(run_id).data.metrics.get("best_val_acc", float("-inf"))
    values = [best[r] for r in listed]
    ordered = all(a >= b for a, b in zip(values, values[1:], strict=False))
    top = client.search_runs([experiment.experiment_id], "tags.`sweeper.kind` = 'trial'",
                             order_by=["metrics.best_val_acc DESC"], max_results=1)  # fmt: skip
    first = top[0].data.metrics["best_val_acc"] if top else None
    return (f"UI landing page drawn in {seconds:.1f} s (exit {done.returncode}): {len(listed)}"
            f" runs listed, best_val_acc {'descending' if ordered else 'NOT descending'}"
            f" ({values[0] if values else '-'} .. {values[-1] if values else '-'}; the study's"
            f" best {first})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--study", default="scale")
    args = parser.parse_args()
    profile = Path(tempfile.mkdtemp(prefix="chromium-"))
    print("| page | size | Chromium | result | plots drawn | console messages |")
    print("|---|---|---|---|---|---|")
    for page in sorted((args.folder / "reports").glob("*.html")):
        print(page_opens(page, profile / page.stem), flush=True)
    print(ui_sorted(args.folder, args.study, profile / "ui"))


if __name__ == "__main__":
    main()
