"""The test suite's wall time: `make test` at a reference commit (default a43a63c, the suite
before the test tiers of issue 22) and at HEAD, one after the other on this machine.

Each commit gets a checkout of its own beside a link to ../shared, and a venv that borrows this
checkout's installed packages (.venv), so that nothing is installed or downloaded; only the
sweeper package differs. Prints both times and their ratio; a suite that fails is reported with
its exit code (its time still counts).

usage: .venv/bin/python bench/suite.py [--ref COMMIT] [--only ref|head]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"


def checkout(commit: str, into: Path) -> Path:
    """The commit's tree at `into`, with a venv that sees this checkout's packages."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), commit],
                   check=True, capture_output=True)  # fmt: skip
    venv = into / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / SITE.name / "site-packages"
    (site / "aa_checkout.pth").write_text(f"{into}\n")  # this commit's sweeper first
    (site / "zz_packages.pth").write_text(f"{SITE / 'site-packages'}\n")
    for script in (ROOT / ".venv" / "bin").iterdir():  # sweeper, mlflow, ray, pytest, ...
        target = venv / "bin" / script.name
        if target.exists() or not script.is_file():
            continue
        lines = script.read_bytes().split(b"\n", 1)
        if len(lines) == 2 and lines[0].startswith(b"#!") and b"python" in lines[0]:
            target.write_bytes(f"#!{venv / 'bin' / 'python3'}\n".encode() + lines[1])
            target.chmod(0o755)
    (venv / ".installed").touch()  # make: nothing to install
    return into


def timed(tree: Path) -> tuple[float, int]:
    """`make test`'s wall time and exit code; a failing suite's FAILED and ERROR lines printed."""
    started = time.monotonic()
    done = subprocess.run(["make", "test", "VENV=.venv"], cwd=tree, capture_output=True,
                          text=True, env={**os.environ, "CI": "true"})  # fmt: skip
    seconds = time.monotonic() - started
    if done.returncode:
        lines = (done.stdout + done.stderr).splitlines()
        print("\n".join(ln for ln in lines if ln.startswith(("FAILED", "ERROR"))), flush=True)
    return seconds, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="a43a63c")
    parser.add_argument("--only", choices=["ref", "head"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="suite-") as folder:
        (Path(folder) / "shared").symlink_to(ROOT.parent / "shared")
        results = {}
        for name, commit in (("ref", args.ref), ("head", "HEAD")):
            if args.only in (None, name):
                tree = checkout(commit, Path(folder) / name)
                results[name] = timed(tree)
                print(f"{name} ({commit}): {results[name][0]:.0f} s, exit {results[name][1]}",
                      flush=True)  # fmt: skip
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tree)], check=False)  # fmt: skip
    cpu = platform.processor() or platform.machine()
    if len(results) == 2:
        ratio = results["head"][0] / results["ref"][0]
        print(f"{cpu}, {os.cpu_count()} cores: make test at HEAD takes {ratio:.2f}x the time"
              f" of {args.ref}")  # fmt: skip


if __name__ == "__main__":
    main()
