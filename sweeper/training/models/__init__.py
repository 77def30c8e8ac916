"""The model zoo: build any supported network by name from a plain options dict."""

from typing import Any

from sweeper.training.models.options import MODEL_NAMES, MODEL_OPTIONS

__all__ = ["MODEL_NAMES", "MODEL_OPTIONS", "build_model"]


def __getattr__(name: str) -> Any:
    # build_model needs torch: imported on first use, so names and options stay light.
    if name == "build_model":
        from sweeper.training.models.registry import build_model

        return build_model
    raise AttributeError(f"module 'sweeper.training.models' has no attribute {name!r}")
