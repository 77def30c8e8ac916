import multiprocessing
import time
from pathlib import Path

from sweeper.worker.gpuslot import gpu_slot


def _hold(lock_dir: Path, exclusive: bool, seconds: float, log: Path, name: str) -> None:
    with gpu_slot(lock_dir, "cuda:0", exclusive=exclusive):
        with open(log, "a") as file:
            file.write(f"{name} start {time.monotonic()}\n")
        time.sleep(seconds)
        with open(log, "a") as file:
            file.write(f"{name} end {time.monotonic()}\n")


def _events(log: Path) -> dict[str, float]:
    rows = [line.split() for line in log.read_text().splitlines()]
    return {f"{name} {what}": float(t) for name, what, t in rows}


def test_shared_holders_overlap_and_exclusive_runs_alone(tmp_path: Path) -> None:
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    a = ctx.Process(target=_hold, args=(tmp_path, False, 1.5, log, "a"))
    b = ctx.Process(target=_hold, args=(tmp_path, False, 1.5, log, "b"))
    a.start()
    b.start()
    time.sleep(0.5)
    x = ctx.Process(target=_hold, args=(tmp_path, True, 0.5, log, "x"))  # the OOM retry
    x.start()
    time.sleep(0.3)
    c = ctx.Process(target=_hold, args=(tmp_path, False, 0.2, log, "c"))  # arrives while x waits
    c.start()
    for p in (a, b, x, c):
        p.join(timeout=30)
        assert p.exitcode == 0
    e = _events(log)
    assert e["b start"] < e["a end"] and e["a start"] < e["b end"]  # shared: together
    assert e["x start"] >= max(e["a end"], e["b end"])  # exclusive: after the others left
    assert e["c start"] >= e["x end"]  # the gate kept the newcomer out until x was done


def test_cpu_needs_no_lock(tmp_path: Path) -> None:
    with gpu_slot(tmp_path, "cpu", exclusive=True):
        assert not list(tmp_path.iterdir())
