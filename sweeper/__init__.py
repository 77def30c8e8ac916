"""sweeper: Optuna sweeps of image-classification CNNs, tracked in MLflow."""

from sweeper.errors import SweeperError

__all__ = ["SweeperError"]
__version__ = "0.1.0"
