"""docker-compose.yml and the Dockerfile, checked as files: no Docker engine is needed.

The sweeper commands are parsed by sweeper's own parser, so the file cannot drift from the CLI.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import mlflow
import pytest
import yaml
from helpers import REPO

from sweeper.cli import build_parser

VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
PASSWORD = "pw-from-the-environment"


def substitute(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${NAME:-default} and ${NAME:?error} interpolation, with only POSTGRES_PASSWORD
    set (or `env`); a required variable that is unset raises, as compose refuses to start."""
    env = {"POSTGRES_PASSWORD": PASSWORD} if env is None else env

    def value_of(match: re.Match) -> str:
        name, kind, text = match.groups()
        if name in env:
            return env[name]
        if kind == "?":
            raise ValueError(f"{name}: {text}")
        return text or ""

    return VARIABLE.sub(value_of, value)


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


def dockerfile(path: str) -> list[str]:
    """A Dockerfile's instructions, comments and blank lines left out."""
    text = (REPO / path).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def test_services_and_images(services: dict[str, Any]) -> None:
    assert set(services) >= {"postgres", "mlflow", "optuna-dashboard", "launcher", "worker"}
    assert re.fullmatch(r"postgres:\d+\.\d+", services["postgres"]["image"])  # pinned
    for name in ("launcher", "worker", "optuna-dashboard"):
        assert services[name]["build"] == "."
    pulled = [s["image"] for s in services.values() if "build" not in s]
    assert pulled == [services["postgres"]["image"]]  # every other image is built from a file
    assert services["postgres"]["healthcheck"]["test"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


@pytest.mark.parametrize("name", ["launcher", "worker"])
def test_sweeper_commands_parse_with_the_cli(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][name]
    for key, value in service["environment"].items():  # as the container's environment has it
        monkeypatch.setenv(key, substitute(value))
    argv = command(service)
    assert argv[0] == "sweeper"
    args = build_parser().parse_args(argv[1:])
    assert args.command == ("launch" if name == "launcher" else "worker")
    assert (REPO / args.study).is_file(), args.study
    assert re.fullmatch(rf"postgresql://sweeper:{PASSWORD}@postgres:5432/optuna", args.storage)
    assert args.tracking_uri == "http://mlflow:5000"


def test_mlflow_serves_artifacts_from_its_postgres_db(services: dict[str, Any]) -> None:
    mlflow_service = services["mlflow"]
    text = " ".join(command(mlflow_service))
    for flag in ("mlflow server", "--artifacts-destination /mlartifacts", "--serve-artifacts",
                 "--host 0.0.0.0", "--port 5000"):  # fmt: skip
        assert flag in text
    assert "pip" not in text  # the driver is in the image, not installed at every start
    backend = substitute(mlflow_service["environment"]["MLFLOW_BACKEND_STORE_URI"])
    assert re.fullmatch(r"postgresql://[^@]+@postgres:5432/mlflow", backend)


def test_the_mlflow_image_is_pinned_to_sweepers_mlflow_and_has_the_driver(
    services: dict[str, Any],
) -> None:
    build = services["mlflow"]["build"]
    lines = dockerfile(f"{build['context']}/{build['dockerfile']}")
    assert lines[0] == f"FROM ghcr.io/mlflow/mlflow:v{mlflow.__version__}"
    assert services["mlflow"]["image"].endswith(f":{mlflow.__version__}")
    assert any(re.match(r'RUN pip install .*"psycopg\[binary\]==[\d.]+"', line) for line in lines)


def test_dashboard_reads_the_optuna_db(services: dict[str, Any]) -> None:
    dashboard = services["optuna-dashboard"]
    python, flag, code = command(dashboard)
    assert (python, flag) == ("python", "-c")
    assert "run_server(os.environ['SWEEPER_STORAGE'], host='0.0.0.0', port=8080)" in code
    storage = substitute(dashboard["environment"]["SWEEPER_STORAGE"])
    assert re.fullmatch(r"postgresql://[^@]+@postgres:5432/optuna", storage)


def test_the_password_has_no_default_and_no_command_line(compose: dict[str, Any]) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{POSTGRES_PASSWORD[^}]*\}", text)
    assert uses and set(uses) == {"${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"}
    with pytest.raises(ValueError, match="set POSTGRES_PASSWORD"):
        substitute(compose["x-urls"]["optuna"], env={})
    for name, service in compose["services"].items():
        argv = command(service) if "command" in service else []
        argv += [substitute(str(part)) for part in service.get("healthcheck", {}).get("test", [])]
        assert not [part for part in argv if PASSWORD in part or "PASSWORD" in part], name


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
    assert re.fullmatch(r"postgresql://[^@]+@postgres:5432/optuna", storage)
    assert common["SWEEPER_TRACKING_URI"] == "http://mlflow:5000"
    assert (
        services["optuna-dashboard"]["environment"]["SWEEPER_STORAGE"] == common["SWEEPER_STORAGE"]
    )
    # Credentials come from the environment only.
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert "${POSTGRES_PASSWORD" in compose["x-common"]["environment"]["SWEEPER_STORAGE"]


def test_dockerfile_installs_the_project_as_non_root() -> None:
    lines = dockerfile("Dockerfile")
    assert lines[0] == "FROM python:3.11-slim"
    assert "WORKDIR /app" in lines
    assert any(re.match(r"RUN pip install (--\S+ )*\.( |$)", line) for line in lines)
    for folder in ("studies", "dashboards"):
        assert any(re.match(rf"COPY {folder}/? ", line) for line in lines), folder
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
