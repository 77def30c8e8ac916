"""What sweeper's service costs as trials and workers grow (issue 24): trials of a fixed wall time
and almost no CPU (bench/scale_study.py) through the whole path, on the embedded default.

    .venv/bin/python bench/scale.py [--trials 100 1000] [--workers 16] [--trial-s 1]
                                    [--peers] [--stores sqlite|postgres] [--tiny] [--no-write]

For each trial count, a fresh `sweeper launch bench/scale_study.py --workers W --trials N
--no-progress` in a temporary --dir. It prints:
- wall time against the floor (trials x trial seconds / workers) and the overhead over it;
- the CPU floor: all the CPU seconds the launch used (launcher, workers, fork server) over the
  machine's cores, the wall time it would take with every core busy all along;
- per-trial overhead (a trial's own wall time beyond its sleep) by trial-number band, and the
  gap between one trial's end and the next one's start on the same worker, by band;
- the launcher's CPU seconds and peak RSS (sampled from /proc every 0.2 s); the workers' CPU
  seconds per trial;
- how long the launcher ran after the last trial ended;
- the time `sweeper status`, `sweeper report` (and its page's size) and the MLflow UI's first
  answer take on the finished study.
With --peers, the same trials also run through Optuna + MLflowCallback in W processes and Ray
Tune with W concurrent trials (bench/scale_peers.py), one after the other on fresh SQLite
stores in the same folder, and a second table gives the three wall times and their ratios.
With --stores postgres, every run gets fresh PostgreSQL databases and a real `mlflow server`.
With --tiny, the trials are bench/tiny_study.py's instead (one epoch of a 3072-32-10 MLP on 512
CIFAR-10 images from ../shared/datasets, a few tens of milliseconds of work; --trial-s 0).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import scale_peers

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "bench" / "scale_study.py"
TINY_STUDY = REPO / "bench" / "tiny_study.py"
CIFAR = Path(os.environ.get("SWEEPER_DATA_DIR", REPO.parent / "shared" / "datasets"))
SWEEPER = str(Path(sys.executable).parent / "sweeper")
BANDS = 5


def launcher_sample(pid: int) -> tuple[float, int]:
    """CPU seconds and peak RSS (bytes) of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    peak = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return cpu, int(peak.group(1)) * 1024 if peak else 0


def fork_server_cpu(launcher: int) -> float:
    """CPU seconds of the launcher's fork server and of the workers it reaped, from /proc: it
    ends after the launcher, unwaited, so RUSAGE_CHILDREN never sees it."""
    for task in Path(f"/proc/{launcher}/task").glob("*"):
        for pid in (task / "children").read_text().split():
            if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done


def ui_first_answer(sweep_dir: Path, flags: list[str], env: dict[str, str]) -> float:
    """Seconds from `sweeper ui` to the first page of the runs it prints."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    server = subprocess.Popen([SWEEPER, "ui", "scale", "--dir", str(sweep_dir), "--port",
                               str(port), *flags], stdout=subprocess.PIPE, text=True,
                              env=env)  # fmt: skip
    try:
        line = server.stdout.readline()
        url = line.split("MLflow UI: ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=60) as page:
            page.read()
        return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)


def tiny_images(per_class: int = 104) -> Path:
    """The first `per_class` test images of each CIFAR-10 class from the JPEG tarball, shuffled,
    in a .npz that bench/tiny_study.py and the peers read ($SWEEPER_BENCH_IMAGES)."""
    from PIL import Image

    classes: dict[str, list[np.ndarray]] = {}
    with tarfile.open(CIFAR / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) != 3 or parts[0] != "test" or not member.isfile():
                continue
            images = classes.setdefault(parts[1], [])
            if len(images) < per_class:
                images.append(np.asarray(Image.open(tar.extractfile(member)).convert("RGB")))
            if len(classes) == 10 and all(len(i) == per_class for i in classes.values()):
                break
    x = np.stack([image for name in sorted(classes) for image in classes[name]])
    y = np.repeat(np.arange(len(classes)), per_class)
    order = np.random.default_rng(0).permutation(len(x))
    path = Path(tempfile.mkdtemp(prefix="tiny-images-")) / "images.npz"
    np.savez(path, x=x[order].transpose(0, 3, 1, 2), y=y[order])
    return path


def one_scale(trials: int, workers: int, trial_s: float, stores: str,
              study: Path) -> dict[str, float | str]:  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix=f"scale-{trials}-"))
    with contextlib.ExitStack() as servers:
        storage, tracking = f"sqlite:///{folder / 'optuna.db'}", ""
        if stores == "postgres":
            storage = scale_peers.new_database("scale_sweeper")
            backend = scale_peers.new_database("scale_sweeper_mlflow")
            tracking = servers.enter_context(scale_peers.mlflow_server(backend, folder))
        flags = ["--storage", storage, "--tracking-uri", tracking] if tracking else []
        row = launched(folder, trials, workers, trial_s, flags, study)
        row.update(_trial_times(storage, trial_s, row["ended"]))
        row["floor"] = row["trials"] * trial_s / workers
        row["overhead"] = row["wall"] / row["floor"] - 1 if row["floor"] else math.nan
        row["worker_cpu_per_trial"] = (row["all_cpu"] - row["launcher_cpu"]) / row["trials"]
        row["cpu_floor"] = row["all_cpu"] / (os.cpu_count() or 1)  # all cores busy all along
        env = {**os.environ, "SWEEPER_CACHE_DIR": str(folder / "cache")}
        row["status_s"], _ = timed([SWEEPER, "status", "scale", "--dir", str(folder), *flags[:2]],
                                   env)  # fmt: skip
        row["report_s"], _ = timed([SWEEPER, "report", "scale", "--dir", str(folder), *flags], env)
        page = folder / "reports" / "scale-evaluation.html"
        row["report_mb"] = page.stat().st_size / 2**20
        row["ui_s"] = ui_first_answer(folder, flags[2:], env)
    row["folder"], row["stores"] = str(folder), stores
    return row


def launched(
    folder: Path, trials: int, workers: int, trial_s: float, flags: list[str], study: Path
) -> dict:
    """`sweeper launch` of the scale study: its wall time, CPU, peak RSS and workers' CPU."""
    env = {**os.environ, "SWEEPER_BENCH_TRIAL_S": str(trial_s),
           "SWEEPER_CACHE_DIR": str(folder / "cache")}  # fmt: skip
    before = children_cpu()
    started = time.perf_counter()
    with open(folder / "launch.err", "w") as err:
        launcher = subprocess.Popen(
            [SWEEPER, "launch", str(study), "--dir", str(folder), "--workers", str(workers),
             "--trials", str(trials), "--no-progress", *flags],
            stdout=subprocess.DEVNULL, stderr=err, env=env,
        )  # fmt: skip
        cpu, peak, forks = 0.0, 0, 0.0
        while launcher.poll() is None:
            with contextlib.suppress(OSError, IndexError):  # it is ending
                cpu, now = launcher_sample(launcher.pid)
                peak = max(peak, now)  # a zombie launcher shows no VmHWM
                forks = max(forks, fork_server_cpu(launcher.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - started
    if launcher.returncode:
        sys.exit(f"the launch failed:\n{(folder / 'launch.err').read_text()[-3000:]}")
    all_cpu = children_cpu() - before + forks
    return {"workers": workers, "wall": wall, "ended": time.time(), "launcher_cpu": cpu,
            "launcher_peak_mb": peak / 2**20, "all_cpu": all_cpu}  # fmt: skip


def _trial_times(storage: str, trial_s: float, ended: float) -> dict[str, float | str]:
    """From the stored trials: their count, own time and idle gaps by band, the workers' CPU a
    trial, and how long the launcher ran after the last one."""
    study = optuna.load_study(study_name="scale", storage=storage)
    done = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.number)
    own = [(t.datetime_complete - t.datetime_start).total_seconds() - trial_s for t in done]
    gaps = _gaps(done)
    band = max(1, len(done) // BANDS)
    return {
        "trials": len(done),
        "after_last_trial": ended - max(t.datetime_complete.timestamp() for t in done),
        "own_by_band": " ".join(f"{statistics.median(own[i : i + band]):.2f}"
                                for i in range(0, len(own), band)),
        "gap_by_band": " ".join(f"{statistics.median(gaps[i : i + band]):.2f}"
                                for i in range(0, len(gaps), band) if gaps[i : i + band]),
    }  # fmt: skip


def side_by_side(row: dict, trial_s: float, names: list[str]) -> dict[str, float | str]:
    """The same trials through the peers, in the sweeper run's folder, one after the other."""
    folder, workers, trials = Path(str(row["folder"])), int(row["workers"]), int(row["trials"])
    stores = str(row["stores"])
    peers = {"optuna": scale_peers.optuna_peer, "ray": scale_peers.ray_peer}
    out: dict[str, float | str] = {"trials": trials, "workers": workers, "sweeper": row["wall"],
                                   "stores": stores, "optuna": math.nan, "ray": math.nan,
                                   "optuna_trials": "-", "ray_trials": "-"}  # fmt: skip
    for name, run in ((name, peers[name]) for name in names):
        result = run(folder, trials, workers, trial_s, stores)
        out[name], out[f"{name}_trials"] = result["wall"], result["trials"]
    return out


def peers_table(rows: list[dict]) -> str:
    lines = ["| stores | trials | workers | sweeper | Optuna + MLflowCallback | Ray Tune |"
             " sweeper / Optuna | sweeper / Ray Tune |", "|" + "---|" * 8]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['stores']} | {r['trials']} | {r['workers']} | {r['sweeper']:.1f} s |"
            f" {r['optuna']:.1f} s"
            f" ({r['optuna_trials']}) | {r['ray']:.1f} s ({r['ray_trials']}) |"
            f" **{r['sweeper'] / r['optuna']:.2f}** | **{r['sweeper'] / r['ray']:.2f}** |"
        )
    return "\n".join(lines)


def _gaps(done: list) -> list[float]:
    """Per trial (by number): seconds its worker was idle between its previous trial and it."""
    last_end: dict[str, float] = {}
    gaps = []
    for t in sorted(done, key=lambda t: t.datetime_start):
        worker = t.user_attrs.get("worker", "?")
        start = t.datetime_start.timestamp()
        if worker in last_end:
            gaps.append(start - last_end[worker])
        last_end[worker] = t.datetime_complete.timestamp()
    return gaps


def table(rows: list[dict]) -> str:
    lines = ["| stores | trials | workers | wall | floor | overhead | CPU / cores | own s/trial"
             " by band | idle s between trials by band | launcher CPU | launcher peak RSS |"
             " worker CPU/trial | after last trial | status | report (page) | UI first page |",
             "|" + "---|" * 16]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['stores']} | {r['trials']} | {r['workers']} | {r['wall']:.1f} s |"
            f" {r['floor']:.1f} s |"
            f" **{r['overhead']:+.0%}** | {r['cpu_floor']:.1f} s | {r['own_by_band']} |"
            f" {r['gap_by_band']} |"
            f" {r['launcher_cpu']:.1f} s | {r['launcher_peak_mb']:.0f} MB |"
            f" {r['worker_cpu_per_trial']:.2f} s | {r['after_last_trial']:.1f} s |"
            f" {r['status_s']:.1f} s | {r['report_s']:.1f} s ({r['report_mb']:.1f} MB) |"
            f" {r['ui_s']:.1f} s |"
        )
    return "\n".join(lines)


def write(markdown: str, args: argparse.Namespace) -> None:
    path = REPO / "BENCHMARKS.md"
    title = "## Scale: one-second trials on many workers (issue 24)"
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())  # fmt: skip
    section = (
        f"{title}\n\n{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}),"
        f" `.venv/bin/python bench/scale.py {' '.join(sys.argv[1:])}`.\n\n{markdown}\n"
    )
    text = path.read_text()
    if title in text:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--trial-s", type=float, default=1.0)
    parser.add_argument("--peers", nargs="*", choices=["optuna", "ray"],
                        help="also Optuna and Ray Tune (both, or those named)")  # fmt: skip
    parser.add_argument("--stores", choices=["sqlite", "postgres"], default="sqlite",
                        help="SQLite files (the embedded default), or PostgreSQL databases on"
                        " 127.0.0.1:5432 and an `mlflow server` on one of them")  # fmt: skip
    parser.add_argument(
        "--tiny", action="store_true", help="bench/tiny_study.py's MLP trials, not waiting ones"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        os.environ["SWEEPER_BENCH_IMAGES"] = str(tiny_images())
        args.trial_s = 0.0
    study = TINY_STUDY if args.tiny else STUDY
    rows, peers = [], []
    for trials in args.trials:
        rows.append(one_scale(trials, args.workers, args.trial_s, args.stores, study))
        print(table(rows[-1:]), f"\n(in {rows[-1]['folder']})", flush=True)
        if args.peers is not None:
            peers.append(side_by_side(rows[-1], args.trial_s, args.peers or ["optuna", "ray"]))
            print(peers_table(peers[-1:]), flush=True)
    markdown = table(rows) + (f"\n\nSide by side:\n\n{peers_table(peers)}" if peers else "")
    print(markdown)
    if not args.no_write:
        write(markdown, args)


if __name__ == "__main__":
    main()
