"""The cluster recipes in deploy/ (KubeRay, SLURM), checked as files: no cluster is needed.

Their sweeper commands are parsed by sweeper's own parser, so the recipes cannot drift from
the CLI.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml
from helpers import REPO

from sweeper.cli import build_parser


@pytest.fixture(scope="module")
def kuberay() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind."""
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kuberay.yaml").read_text()))
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], doc)
    return by_kind


def sweeper_args(command: str) -> Any:
    parts = shlex.split(command)
    assert parts[0] == "sweeper", command
    return build_parser().parse_args(parts[1:])


def test_the_rayjob_launches_on_the_raycluster(kuberay: dict[str, dict[str, Any]]) -> None:
    job = kuberay["RayJob"]["spec"]
    args = sweeper_args(job["entrypoint"])
    assert args.command == "launch" and args.ray == "auto"
    assert job["clusterSelector"]["ray.io/cluster"] == kuberay["RayCluster"]["metadata"]["name"]
    assert args.dir == "/app/sweeps"


def containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_every_ray_node_has_gpus_or_none_and_reaches_the_same_stores(
    kuberay: dict[str, dict[str, Any]],
) -> None:
    cluster = kuberay["RayCluster"]
    (gpu_group,) = cluster["spec"]["workerGroupSpecs"]
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    for container in containers(cluster):
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["SWEEPER_STORAGE"]["valueFrom"]  # no password in the file
        assert env["SWEEPER_TRACKING_URI"]["value"].startswith("http://mlflow:")
        (mount,) = container["volumeMounts"]
        assert mount == {"name": "sweeps", "mountPath": "/app/sweeps"}  # the shared --dir
    assert kuberay["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_mlflow_server_and_postgres_are_there() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "kuberay.yaml").read_text()))
    names = {d["metadata"]["name"] for d in docs if d["kind"] in ("Deployment", "Service")}
    assert names == {"postgres", "mlflow"}
    (server,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    command = server["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["mlflow", "server"] and "5000" in command


@pytest.fixture(scope="module")
def sbatch() -> str:
    """The script with its continued lines joined."""
    return (REPO / "deploy" / "ray-slurm.sbatch").read_text().replace("\\\n", " ")


def test_the_sbatch_launch_parses_and_names_the_ray_head(sbatch: str) -> None:
    (line,) = [ln.strip() for ln in sbatch.splitlines() if ln.strip().startswith("sweeper ")]
    args = sweeper_args(line)
    assert args.command == "launch"
    assert args.ray == "$head_ip:$PORT"
    assert args.dir == "$SWEEP_DIR"


def test_the_sbatch_starts_a_head_and_joins_every_other_node(sbatch: str) -> None:
    starts = [ln for ln in sbatch.splitlines() if "ray start" in ln]
    assert len(starts) == 2
    head, node = starts
    assert "--head" in head and "--port=$PORT" in head
    assert '--address="$head_ip:$PORT"' in node
    for start in starts:
        assert "--num-gpus=" in start and "--block" in start  # srun holds the node's Ray
    assert re.search(r"^#SBATCH --nodes=\d+", sbatch, re.M)
