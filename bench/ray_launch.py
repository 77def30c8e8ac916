"""The same 6-trial tiny quickstart sweep (2 epochs, 500 images, no ensemble) with `sweeper
launch --ray` on a local two-node Ray cluster (one CPU each) and with 2 local workers, both on
PostgreSQL and an `mlflow server`, inside `unshare --net --pid` (tests/ray_scenario.py --bench):
what going through Ray costs a launch. Prints one JSON line: seconds of each and their ratio.

PYTHONPATH=. SWEEPER_DATA_DIR=../shared/datasets python bench/ray_launch.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    out = tempfile.mkdtemp(prefix="bench-ray-")
    inside = f"ip link set lo up && exec {sys.executable} tests/ray_scenario.py {out} --bench"
    done = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "bash", "-c", inside],
        cwd=REPO, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"bench/ray_launch.py: the scenario failed; logs in {out}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    print(f"--ray {result['ray_s']} s, local {result['local_s']} s: ratio {result['ratio']}")


if __name__ == "__main__":
    main()
