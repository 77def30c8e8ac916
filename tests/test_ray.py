"""`sweeper launch --ray` on a real two-node Ray cluster with PostgreSQL and an `mlflow server`.

Everything runs in tests/ray_scenario.py inside network and process namespaces of its own
(`unshare --net --pid`, only loopback up): Ray binds the machine's address even when told
127.0.0.1, so the namespace keeps all traffic on loopback, and whatever the scenario starts dies
with it. Here: the stores' one-line errors, then the scenario's findings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QUICKSTART, REPO, sweeper_here

from sweeper.pool.ray import mark_shared, readable


@pytest.mark.parametrize(
    ("stores", "says"),
    [
        ((), "give every node one PostgreSQL database"),
        (("--storage", "postgresql://u@127.0.0.1:9/db"), "run an `mlflow server`"),
        (("--storage", "postgresql://u@127.0.0.1:9/db", "--tracking-uri", "file:///tmp/m"),
         "--tracking-uri http://"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("command", ["launch", "ensemble"])
def test_ray_with_stores_on_this_machine_is_one_line(
    tmp_path: Path, command: str, stores: tuple[str, ...], says: str
) -> None:
    done = sweeper_here(command, QUICKSTART, "--dir", str(tmp_path), "--ray", *stores)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], done.stderr


def test_ray_address_where_no_cluster_listens_is_one_line(tmp_path: Path) -> None:
    stores = ["--storage", "postgresql://u@127.0.0.1:9/db", "--tracking-uri", "http://127.0.0.1:9"]
    done = sweeper_here("launch", QUICKSTART, "--dir", str(tmp_path), "--ray", "127.0.0.1:9",
                        *stores)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "sweeper: error: --ray 127.0.0.1:9: no Ray cluster there ([Errno 111] Connection refused)"
    )


def test_a_sweep_dir_a_node_cannot_read_is_found(tmp_path: Path) -> None:
    marker = mark_shared(tmp_path)
    assert readable(marker)
    assert not readable((marker[0], "another launch's token"))
    Path(marker[0]).unlink()  # as on a node where --dir is a local folder
    assert not readable(marker)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("ray")
    inside = f"ip link set lo up && exec {sys.executable} tests/ray_scenario.py {out}"
    done = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "bash", "-c", inside],
        cwd=REPO, capture_output=True, text=True, timeout=420,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(out.glob("*.err")))
    assert done.returncode == 0, f"{done.stderr[-4000:]}{logs}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_six_trials_finish_once_on_both_nodes(scenario: dict) -> None:
    assert scenario["first_code"] == 0
    assert scenario["finished"] == 6, scenario["states"]
    assert len(scenario["nodes"]) == 2, scenario["nodes"]  # each node ran trials
    # each node's worker output reached the launcher, named by its node
    assert len(scenario["worker_lines_from"]) == 2, scenario["worker_lines_from"]
    assert {node[:8] for node in scenario["nodes"]} == set(scenario["worker_lines_from"])
    assert scenario["distinct_configs"] == 6  # no config trained twice
    # each finished trial has its one FINISHED run on the server
    assert scenario["finished_runs"] == scenario["finished_trial_numbers"]


def test_a_killed_worker_s_trial_resumes_from_its_epoch_checkpoint(scenario: dict) -> None:
    killed = scenario["killed_trial"]
    assert scenario["states"][str(killed)] == "FAIL"
    (retry,) = [n for n, source in scenario["retries"].items() if source == killed]
    assert scenario["resumed_from_epoch"][retry] == 1
    assert scenario["states"][retry] in ("COMPLETE", "PRUNED")


def test_sigint_at_the_launcher_leaves_no_actor_or_worker(scenario: dict) -> None:
    assert scenario["second_code"] == 130
    assert scenario["left_behind"] == {"actors": [], "workers": []}
    assert scenario["running_after_sigint"] == []  # the interrupted trial went back to the queue


def test_the_ensemble_trains_on_the_cluster_too(scenario: dict) -> None:
    assert scenario["members"] == 4  # the quickstart's top 2 configs x 2 seeds
    # those not kept from the sweep as trained (a source trial with its seed) trained on the nodes
    assert sum(scenario["member_nodes"].values()) >= 1, scenario
    assert set(scenario["member_nodes"]) <= set(scenario["nodes"])  # Ray nodes, not this host
    (line,) = scenario["ensemble_line"]
    assert "ensemble of 4 members" in line
