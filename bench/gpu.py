"""sweeper on one NVIDIA GPU (an H100 or H200) in one command of at most 8 minutes: the CUDA
tests first, then throughput, trials per hour with packed trials and a short ResNet-9 sweep with
its seed ensemble, written as Markdown tables.

    bash bench/gpu.sh [--budget S] [--only STAGE ...] [--sweep-timeout S] [--keep-going] [--write]

(bench/gpu.sh sets up the Python, PYTHONPATH and data, then runs this file.) Each stage runs in
its own process under its own timeout; one that fails or runs out of time is recorded in the
table and the next one runs, except after failed tests (the rest would spend the GPU's time on
code known broken; --keep-going runs it anyway). The stages, in order:

1. preflight: nvidia-smi -L; torch, CUDA and cuDNN versions; the imports sweeper needs; CIFAR-10
   decoded into $SWEEPER_CACHE_DIR. Nothing runs after a failed preflight.
2. tests: `make test-gpu` (tests_gpu/).
3. throughput: images/s of sweeper's train() at batch 512 for cnn2, resnet20, resnet56, vgg16
   and resnet9, fp32 against bf16 + channels_last (the config keys false vs true), timed over
   200 steps after a warm-up epoch; and, for cnn2 and resnet9, a DataLoader + torchvision
   transforms pipeline (bench/pipeline.py's, with 8 loader workers and pinned memory) against
   sweeper's device-resident batches (DeviceSplit), both bf16 + channels_last.
4. trials: trials per hour of studies/cnn.py at a small fixed scale (8 trials x 2 epochs x 10k
   images) with 1, 2, 4 and 8 trials per GPU, each launch in its own --dir.
5. sweep: studies/resnet9_fast.py on 4 packed workers with --timeout set to what the budget
   leaves (or --sweep-timeout), the test accuracy of its best trial (by validation), then its seed
   ensemble (`sweeper ensemble`) and the ensemble's test accuracy.

Results: stdout, and gpu-bench.md, gpu-bench.json and gpu-bench.log under $OUT when it is set
(else under the work directory, printed at the end); --write also puts the tables into
BENCHMARKS.md. Exit code 0 when every stage ran, 1 when one failed, 2 when preflight failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_stages import KILL_GRACE_S, ROOT, STAGE_FUNCTIONS, run_stage_here  # bench/ is on sys.path
from gpu_tables import render

HEADING = "## GPU: throughput, packed trials and a short ResNet-9 sweep (bench/gpu.sh)"
STAGES = ("preflight", "tests", "throughput", "trials", "sweep")

# Time budget in seconds. The device tool lends 15 minutes a session, its start included; the
# whole run must fit in 8 minutes, so a failed run can be fixed and run again. Each stage's
# timeout below caps it; what it usually takes is estimated (no GPU had run these yet).
BUDGET_S = 470  # the whole run, from this process's start; gpu.sh's set-up takes seconds
STAGE_TIMEOUT_S = {
    "preflight": 60,  # ~20: nvidia-smi, imports, decoding CIFAR-10 once (~10 s)
    "tests": 180,  # ~90: 4 launches of ~10 s fixed cost each, 6 short trainings
    "throughput": 110,  # ~80: 10 runs of 250 steps at batch 512, 2 DataLoader runs
    "trials": 120,  # ~90: 4 launches of 8 small trials
}
SWEEP_RESERVE_S = 120  # after the sweep's last trial starts: trials in flight, then the ensemble
MIN_SWEEP_S = 150  # less left than this: the sweep stage is not run


class Stage:
    """One stage as the driver ran it: status, seconds, result rows, its output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = "not run"
        self.seconds = 0.0
        self.timeout: float | None = None
        self.rows: list[dict[str, Any]] = []
        self.output = ""

    @property
    def ok(self) -> bool:
        return self.status.startswith("ok")


def run_stage(stage: Stage, command: list[str], timeout: float, log: Path, result: Path) -> None:
    """Run a stage's process in its own process group; on timeout, end the whole group."""
    stage.timeout = timeout
    print(f"== {stage.name} (timeout {timeout:.0f} s)", flush=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
            stage.status = "ok" if code == 0 else f"FAILED (exit {code})"
        except subprocess.TimeoutExpired:
            _end_group(process)
            stage.status = f"TIMED OUT after {timeout:.0f} s"
    stage.seconds = time.perf_counter() - started
    stage.output = log.read_text(errors="replace")
    if result.exists():
        stage.rows = [json.loads(line) for line in result.read_text().splitlines() if line]
    print(f"-- {stage.name}: {stage.status} in {stage.seconds:.0f} s", flush=True)
    if not stage.ok:
        print("\n".join(stage.output.splitlines()[-30:]), flush=True)


def _end_group(process: subprocess.Popen) -> None:
    """SIGTERM to the stage's process group (launchers stop their workers), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def drive(args: argparse.Namespace) -> int:
    started = time.time()
    deadline = started + args.budget
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sweeper-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else workdir
    out.mkdir(parents=True, exist_ok=True)
    smi = _nvidia_smi()
    print(smi, flush=True)
    plan = [name for name in STAGES if name == "preflight" or not args.only or name in args.only]
    stages = {name: Stage(name) for name in STAGES}
    for name in plan:
        stage = stages[name]
        left = deadline - time.time()
        if name == "sweep":
            if args.sweep_timeout is None and left < MIN_SWEEP_S:
                stage.status = f"not run: {left:.0f} s left of the budget"
                continue
            timeout = left - 5  # the rest of the budget
            sweep_timeout = args.sweep_timeout or max(30.0, left - SWEEP_RESERVE_S)
        else:
            timeout = min(STAGE_TIMEOUT_S[name], left - 5)
            sweep_timeout = 0.0
        if timeout < 10:
            stage.status = f"not run: {left:.0f} s left of the budget"
            continue
        result = workdir / f"{name}.jsonl"
        if name == "tests":
            command = _test_command()
        else:
            command = [sys.executable, __file__, "--stage", name, "--result", str(result),
                       "--workdir", str(workdir), "--data-dir", args.data_dir,
                       "--stage-deadline", str(time.time() + timeout - KILL_GRACE_S),
                       "--sweep-timeout", str(sweep_timeout)]  # fmt: skip
        run_stage(stage, command, timeout, workdir / f"{name}.log", result)
        if name == "tests":
            summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error).*?)\s*=*$", stage.output,
                                 re.M)  # fmt: skip
            stage.status += f": {summary[-1]}" if summary else ""
        if name == "preflight":
            machine = next((r for r in stage.rows if r.get("table") == "machine"), {})
            print(_versions(machine), flush=True)
            if not stage.ok:
                for later in plan[1:]:
                    stages[later].status = "not run: preflight failed"
                break
        if name == "tests" and not stage.ok and not args.keep_going:
            for later in plan[plan.index(name) + 1 :]:
                stages[later].status = "not run: the tests failed (--keep-going runs it)"
            break
    report = render(stages, smi, args, time.time() - started)
    print("\n" + report, flush=True)
    (out / "gpu-bench.md").write_text(report)
    rows = {name: {"status": s.status, "seconds": s.seconds, "rows": s.rows}
            for name, s in stages.items()}  # fmt: skip
    (out / "gpu-bench.json").write_text(json.dumps(rows, indent=1, default=str))
    with open(out / "gpu-bench.log", "w") as log:
        for name in plan:
            path = workdir / f"{name}.log"
            if path.exists():
                log.write(f"==================== {name}\n{path.read_text(errors='replace')}\n")
    print(f"wrote {out}/gpu-bench.md, gpu-bench.json, gpu-bench.log", flush=True)
    if args.write:
        from pipeline import write_section  # bench/pipeline.py: replaces its own section

        write_section(ROOT / "BENCHMARKS.md", HEADING, report.split("\n", 2)[2])
        print(f"wrote '{HEADING}' to BENCHMARKS.md")
    if not stages["preflight"].ok:
        return 2
    return 0 if all(stages[name].ok for name in plan) else 1


def _nvidia_smi() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return (done.stdout or done.stderr).strip() or f"nvidia-smi -L: exit {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"nvidia-smi -L: {error}"


def _versions(machine: dict[str, Any]) -> str:
    keys = ("device", "memory_gib", "torch", "cuda", "cudnn", "python", "gpus", "cpus")
    return ", ".join(f"{key} {machine.get(key, '?')}" for key in keys)


def _test_command() -> list[str]:
    """`make test-gpu` with this Python's pytest (a bare GPU machine has no .venv)."""
    pytest = f"{shlex.quote(sys.executable)} -m pytest"
    if shutil.which("make"):
        return ["make", "--no-print-directory", "test-gpu", f"PYTEST={pytest}"]
    return [sys.executable, "-m", "pytest", "-q", "tests_gpu"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages: " + ", ".join(STAGES) + ". See the module docstring for what each does.",
    )
    parser.add_argument(
        "--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run ({BUDGET_S})"
    )
    parser.add_argument(
        "--only", nargs="+", choices=STAGES[1:], metavar="STAGE", help="only these stages"
    )
    parser.add_argument(
        "--sweep-timeout", type=float, help="the sweep's --timeout (default: what is left)"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run the later stages after failed tests"
    )
    parser.add_argument("--write", action="store_true", help="put the tables into BENCHMARKS.md")
    parser.add_argument("--workdir", help="sweep dirs and logs (default: a new temporary dir)")
    default_data = os.environ.get("SWEEPER_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
    parser.add_argument(
        "--data-dir", default=default_data, help="where cifar10-jpeg.tar.gz is ($SWEEPER_DATA_DIR)"
    )
    parser.add_argument("--stage", choices=list(STAGE_FUNCTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--stage-deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        return run_stage_here(args)
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
