"""Shared fixtures: the real CIFAR-10 archive from ../shared/datasets, decoded once per cache,
and fresh databases on the machine's real PostgreSQL server (default
postgresql+psycopg2://postgres@127.0.0.1:5432/postgres, or $SWEEPER_TEST_PG_URL: an admin URL
that may CREATE DATABASE); each test module drops the databases it made."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import REPO, Store

from sweeper.training.data import ImageSet, SplitData, load_images, split

DATASETS = (REPO.parent / "shared" / "datasets").resolve()

ADMIN_URL = os.environ.get(
    "SWEEPER_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)

# Decoded arrays are cached across test sessions; a fresh clone decodes once (about 10 s).
os.environ.setdefault("SWEEPER_CACHE_DIR", str(REPO / ".pytest_cache" / "sweeper-data"))
os.environ.setdefault("SWEEPER_DATA_DIR", str(DATASETS))  # as `make test` sets it


# The tiers (pytest -m): e2e launches real sweeps, fault breaks processes and servers on purpose,
# cluster starts a Ray cluster; the fast tier is the rest (`make test-fast`, seconds to a minute).
E2E_MODULES = {"test_launch", "test_resume", "test_resume_ctrl_c", "test_server", "test_report",
               "test_retrain", "test_postgres", "test_proxy", "test_ui", "test_ensemble",
               "test_custom", "test_notebook"}  # fmt: skip
CLUSTER_MODULES = {"test_ray"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module.__name__ in CLUSTER_MODULES:
            item.add_marker(pytest.mark.cluster)
        elif item.module.__name__ in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    assert (DATASETS / "cifar10-jpeg.tar.gz").exists(), f"CIFAR-10 archive missing in {DATASETS}"
    return DATASETS


@pytest.fixture(scope="session")
def cifar10(datasets_dir: Path) -> ImageSet:
    return load_images("cifar10", str(datasets_dir))


@pytest.fixture(scope="session")
def small_cifar(cifar10: ImageSet) -> SplitData:
    """2,000 training and 1,000 validation images of the real data."""
    return split(cifar10, val_size=1000, train_size=2000, seed=0)


@pytest.fixture(scope="module")
def admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:  # the machine runs PostgreSQL: a failure here is real
        connection.execute(sa.text("SELECT 1"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def new_database(admin: sa.Engine) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases; returns each one's storage URL."""
    created: list[str] = []

    def create() -> str:
        name = f"sweeper_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return admin.url.set(database=name).render_as_string(hide_password=False)

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Callable[[Path], Store]:
    """Makes the storage of one sweep directory: its SQLite default, or a fresh PostgreSQL
    database on the machine's server. Launch tests take it to run over both (as Optuna's own
    suite runs over its storages)."""
    if request.param == "sqlite":
        return lambda sweep_dir: Store("sqlite", f"sqlite:///{sweep_dir / 'optuna.db'}", ())
    create = request.getfixturevalue("new_database")

    def postgres(_: Path) -> Store:
        url = create()
        return Store("postgresql", url, ("--storage", url))

    return postgres
