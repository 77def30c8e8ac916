"""The registered ensemble as an MLflow model directory, and back.

Written as an MLflow "models from code" pyfunc: the code is sweeper's own model_code.py, the
data the tensors-only files of sweeper.ensemblefiles (under artifacts/ensemble). Nothing in the
directory is a pickle. `mlflow.pyfunc.load_model` loads it by running the stored model_code.py;
sweeper reads it with `read_model`, which runs nothing stored there, so a directory from a
shared tracking server is safe to export and predict with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sweeper.errors import SweeperError, first_line

ARTIFACT = "ensemble"  # the artifacts entry (and folder) that holds the ensemble's files
MODEL_CODE = Path(__file__).with_name("model_code.py")
CODE = Path(__file__).resolve().parents[2]  # the sweeper package: MLflow's loader imports it
REQUIREMENTS = ("numpy", "pandas", "pyyaml", "tqdm", "safetensors")  # torch: pinned below


def save_model(ensemble: Any, path: Path, example: np.ndarray, mlflow_model: Any = None) -> Path:
    """Write `ensemble` as an MLflow model directory at `path` (which must not exist or be
    empty); `example` is a batch of float32 images scaled 0..1 [B, C, H, W]."""
    import logging
    import tempfile

    import mlflow.pyfunc
    import torch
    from mlflow.models import infer_signature

    from sweeper.ensemble import files as ensemblefiles

    inputs = np.ascontiguousarray(example, dtype=np.float32)
    with torch.no_grad():
        outputs = ensemble(torch.from_numpy(inputs)).numpy()
    channels, size = ensemble.input_shape
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)  # "validating input example"
    with tempfile.TemporaryDirectory() as tmp:
        folder = ensemblefiles.write(ensemble, Path(tmp) / ARTIFACT)
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(MODEL_CODE),
            artifacts={ARTIFACT: str(folder)},
            mlflow_model=mlflow_model,
            signature=infer_signature(inputs, outputs),
            input_example=inputs,
            code_paths=[str(CODE)],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", *REQUIREMENTS],
            metadata={
                "format": ensemblefiles.FORMAT,
                "classes": list(ensemble.classes),
                "input_shape": [channels, size, size],
            },
        )
    return path


def read_model(path: Path, study: str = "STUDY") -> Any:
    """The Ensemble in an MLflow model directory written by `save_model`, read with sweeper's
    own code (nothing stored in the directory runs). Anything else is refused: a model
    registered by an older sweeper (a pickle) with the command that rebuilds it."""
    from sweeper.ensemble import files as ensemblefiles

    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise SweeperError(
            f"{path} is a directory without an MLmodel file; give an MLflow model "
            "directory (`sweeper export --format mlflow`), a .pt or a .onnx file"
        )
    try:
        flavors = yaml.safe_load(mlmodel.read_text())["flavors"]
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise SweeperError(f"cannot read {mlmodel} ({first_line(exc)})") from None
    if isinstance(flavors, dict) and "pytorch" in flavors:
        raise SweeperError(
            f"{path} holds an ensemble registered by an older sweeper, as a pickle, "
            f"which sweeper does not load (it could run code); rebuild it with "
            f"`sweeper ensemble {study}`"
        )
    try:
        relative = str(flavors["python_function"]["artifacts"][ARTIFACT]["path"])
    except (KeyError, TypeError):
        raise SweeperError(
            f"{path} is not an ensemble registered by sweeper; rebuild it with "
            f"`sweeper ensemble {study}`"
        ) from None
    folder = (path / str(relative)).resolve()
    if not folder.is_relative_to(path.resolve()):
        raise SweeperError(f"{path}/MLmodel points outside its directory ({relative})")
    return ensemblefiles.read(folder)
