"""The model zoo: build any supported network by name from a plain options dict."""

from sweeper.models.registry import MODEL_NAMES, MODEL_OPTIONS, build_model

__all__ = ["MODEL_NAMES", "MODEL_OPTIONS", "build_model"]
