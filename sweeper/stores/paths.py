"""Where a sweep keeps its state: by default all of it under one directory that the user names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sweeper.errors import SweeperError

MLFLOW_URL = "http://127.0.0.1:5000"  # where `sweeper ui` serves the MLflow UI by default


@dataclass(frozen=True)
class SweepPaths:
    """The sweep directory and the stores it holds (or the URLs that replace them)."""

    dir: Path
    storage_url: str  # Optuna storage: <dir>/optuna.db unless --storage
    tracking_uri: str  # MLflow store: <dir>/mlflow.db unless --tracking-uri
    artifact_root: str | None  # <dir>/artifacts for the embedded store; the server's otherwise

    @classmethod
    def resolve(cls, directory: str | Path, storage: str | None = None,
                tracking_uri: str | None = None) -> SweepPaths:  # fmt: skip
        """The sweep directory, created if missing."""
        root = Path(directory).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            dir=root,
            storage_url=storage or f"sqlite:///{root / 'optuna.db'}",
            tracking_uri=tracking_uri or default_tracking_uri(root),
            artifact_root=None if tracking_uri else str(root / "artifacts"),
        )

    @classmethod
    def existing(cls, directory: str | Path, storage: str | None = None,
                 tracking_uri: str | None = None) -> SweepPaths:  # fmt: skip
        """A sweep to read or join: a --dir without a launch is an error, not a new, empty store."""
        if storage is None and not (Path(directory) / "optuna.db").is_file():
            raise SweeperError(
                f"--dir {directory}: no optuna.db there; give the --dir of the launch"
            )
        return cls.resolve(directory, storage, tracking_uri)

    def checkpoints(self, study_name: str) -> Path:
        """Epoch checkpoints (trial-N-last.pt) and best weights (trial-N-best.pt) of a study."""
        return self.dir / "checkpoints" / study_name

    @property
    def locks(self) -> Path:
        """Lock files of the GPUs that packed workers share."""
        return self.dir / "locks"

    def exports(self, study_name: str) -> Path:
        """TorchScript and ONNX files of the study's registered ensembles."""
        return self.dir / "exports" / study_name

    def report(self, study_name: str, dashboard: str) -> Path:
        return self.dir / "reports" / f"{study_name}-{dashboard}.html"


def cache_dir() -> Path:
    """Decoded data sets and store templates: $SWEEPER_CACHE_DIR, else ~/.cache/sweeper."""
    return Path(os.environ.get("SWEEPER_CACHE_DIR") or Path.home() / ".cache" / "sweeper")


def default_tracking_uri(sweep_dir: str | Path) -> str:
    """The embedded MLflow store of a local sweep: a sqlite file inside the sweep directory."""
    return f"sqlite:///{Path(sweep_dir).resolve() / 'mlflow.db'}"
