"""docker-compose.yml and the Dockerfile, checked as files: no Docker engine is needed.

The sweeper commands are parsed by sweeper's own parser, so the file cannot drift from the CLI.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml
from helpers import REPO

from sweeper.cli import build_parser

VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def substitute(value: str) -> str:
    """Compose's ${NAME:-default} interpolation, with every variable unset."""
    return VARIABLE.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def command(service: dict[str, Any]) -> list[str]:
    raw = service["command"]
    parts = shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]
    return [substitute(part) for part in parts]


def test_services_and_images(services: dict[str, Any]) -> None:
    assert set(services) >= {"postgres", "mlflow", "optuna-dashboard", "launcher", "worker"}
    assert services["postgres"]["image"] == "postgres:16"
    assert services["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow")
    assert services["optuna-dashboard"]["image"].startswith("ghcr.io/optuna/optuna-dashboard")
    for name in ("launcher", "worker"):
        assert services[name]["build"] == "."
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


@pytest.mark.parametrize("name", ["launcher", "worker"])
def test_sweeper_commands_parse_with_the_cli(services: dict[str, Any], name: str) -> None:
    argv = command(services[name])
    assert argv[0] == "sweeper"
    args = build_parser().parse_args(argv[1:])
    assert args.command == ("launch" if name == "launcher" else "worker")
    assert (REPO / args.study).is_file(), args.study
    assert args.storage.startswith("postgresql+psycopg2://") and "@postgres:5432/" in args.storage
    assert args.tracking_uri == "http://mlflow:5000"


def test_mlflow_serves_artifacts_from_its_postgres_db(services: dict[str, Any]) -> None:
    text = " ".join(command(services["mlflow"]))
    for flag in ("mlflow server", "--artifacts-destination /mlartifacts", "--serve-artifacts",
                 "--host 0.0.0.0", "--port 5000"):  # fmt: skip
        assert flag in text
    backend = substitute(services["mlflow"]["environment"]["BACKEND_STORE_URI"])
    assert re.fullmatch(r"postgresql\+psycopg2://[^@]+@postgres:5432/mlflow", backend)


def test_dashboard_reads_the_optuna_db(services: dict[str, Any]) -> None:
    storage, *rest = command(services["optuna-dashboard"])
    assert re.fullmatch(r"postgresql\+psycopg2://[^@]+@postgres:5432/optuna", storage)
    assert rest[rest.index("--host") + 1] == "0.0.0.0"


def test_published_ports_bind_localhost_only(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {"mlflow", "optuna-dashboard"}
    for ports in published.values():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), port


def test_workers_reserve_a_gpu_and_scale(services: dict[str, Any]) -> None:
    for name in ("worker", "launcher"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["count"] == 1
        assert device["capabilities"] == ["gpu"]
    worker = services["worker"]
    assert "container_name" not in worker  # `--scale worker=N` needs generated names
    assert not worker.get("ports")


def test_environment_comes_from_one_place(compose: dict[str, Any]) -> None:
    services = compose["services"]
    common = compose["x-common"]["environment"]
    for name in ("launcher", "worker"):
        assert services[name]["environment"] == common
    storage = substitute(common["SWEEPER_STORAGE"])
    assert re.fullmatch(r"postgresql\+psycopg2://[^@]+@postgres:5432/optuna", storage)
    assert common["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert command(services["worker"]).count(storage) == 1
    # Credentials come from the environment, with defaults only for a laptop.
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert "${POSTGRES_PASSWORD" in compose["x-common"]["environment"]["SWEEPER_STORAGE"]


def test_dockerfile_installs_the_project_as_non_root() -> None:
    lines = [
        line.strip()
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    assert "WORKDIR /app" in lines
    assert any(re.match(r"RUN pip install (--\S+ )*\.( |$)", line) for line in lines)
    for folder in ("studies", "dashboards"):
        assert any(re.match(rf"COPY {folder}/? ", line) for line in lines), folder
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
