"""The registered ensemble's MLflow model code ("models from code"): `mlflow.pyfunc.load_model`
runs this file, then load_context rebuilds the ensemble from its tensors-only files. MLflow
keeps a copy of it in every model directory; sweeper itself never runs that copy (it reads the
files with its own code: sweeper.tracking.model.read_model)."""

from pathlib import Path

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel, PythonModelContext

from sweeper.ensemble import files as ensemblefiles


class EnsembleModel(PythonModel):
    """Float32 images scaled 0..1 [N, C, H, W] -> probabilities [N, classes]."""

    # the model's tensor signature checks inputs; without this MLflow wants type hints on
    # predict (it warns "Add type hints") and would read them as a second schema
    _skip_type_hint_validation = True

    def load_context(self, context: PythonModelContext) -> None:
        self.ensemble = ensemblefiles.read(Path(context.artifacts["ensemble"]))

    def predict(self, context, model_input, params=None):
        x = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32))
        with torch.no_grad():
            return self.ensemble(x).numpy()


set_model(EnsembleModel())
