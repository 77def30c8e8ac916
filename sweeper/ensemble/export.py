"""Write an Ensemble to a TorchScript or ONNX file, load any export back, classify image files.

Every export takes float32 images scaled 0..1 [N, C, H, W] and returns probabilities, and
carries its class names: TorchScript in the extra file `classes.json`, ONNX in the metadata
property `classes`. MLflow model directories are written and read by `sweeper.stores.tracking`
(tensors and JSON only, rebuilt by sweeper's own code: nothing stored in them runs).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sweeper.atomic import replacing
from sweeper.ensemble.evaluate import Ensemble, one_model
from sweeper.errors import SweeperError, first_line
from sweeper.records import Attr
from sweeper.stores.paths import SweepPaths
from sweeper.training.data import nchw

FORMATS = ("torchscript", "onnx", "mlflow")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ONNX_OPSET = 18
BATCH = 256  # images per forward pass when predicting

Predictor = Callable[[np.ndarray], np.ndarray]


def export(ensemble: Ensemble | nn.Module, fmt: str, out: Path, example: Tensor) -> Path:
    """Write `ensemble` as `fmt` ("torchscript": a .pt file, "onnx": a .onnx file) to `out`.

    `example` is a batch of inputs (float 0..1 [B, C, H, W]) that fixes C, H and W; the batch
    size stays free. The class names come from `ensemble.classes` (none: predict shows
    indices). The file appears whole or not at all.
    """
    if fmt not in FORMATS:
        raise SweeperError(f"export: unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if fmt == "mlflow":
        raise SweeperError(
            "export: format 'mlflow' is the registered model directory itself; "
            "use `sweeper export --format mlflow` or pick torchscript or onnx here"
        )
    out = Path(out)
    if example.ndim != 4:
        raise SweeperError(f"export: example must be [B, C, H, W], got {list(example.shape)}")
    if len(example) < 2:  # a batch of 1 would be specialised into the graph
        example = example.expand(2, *example.shape[1:])
    example = example.float().contiguous()
    ensemble.eval()
    tensors = [*ensemble.parameters(), *ensemble.buffers()]
    if tensors:
        example = example.to(tensors[0].device)
    classes = [str(c) for c in getattr(ensemble, "classes", [])]  # [] shows indices
    info = {"classes": classes, "input_shape": list(example.shape[1:])}
    write = _write_torchscript if fmt == "torchscript" else _write_onnx
    with replacing(out) as tmp:
        write(ensemble, example, tmp, info)
    return out


def _write_torchscript(ensemble: nn.Module, example: Tensor, path: Path, info: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit
        traced = torch.jit.trace(ensemble, example, check_trace=False)
        extra = {"classes.json": json.dumps(info["classes"]), "input.json": json.dumps(info)}
        torch.jit.save(traced, str(path), _extra_files=extra)


def _write_onnx(ensemble: nn.Module, example: Tensor, path: Path, info: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
        program = torch.onnx.export(
            ensemble,
            (example,),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.model.metadata_props.update({key: json.dumps(value) for key, value in info.items()})
    program.save(str(path), external_data=False)


def load_exported(path: Path | str) -> tuple[Predictor, list[str]]:
    """A predict function (float32 images 0..1 [N, C, H, W] -> probabilities [N, classes]) and
    the class names of a .pt or .onnx export or an MLflow model directory."""
    return _load(Path(path))[:2]


def _load(path: Path) -> tuple[Predictor, list[str], tuple[int, int] | None]:
    """load_exported plus the (channels, size) the model takes, where the file says so."""
    if not path.exists():
        raise SweeperError(f"predict: model {path} does not exist; give a .pt, .onnx or MLflow dir")
    loaders = {".pt": _load_torchscript, ".onnx": _load_onnx}
    load = _load_mlflow if path.is_dir() else loaders.get(path.suffix)
    if load is None:
        raise SweeperError(
            f"predict: {path} is not a model export; give a .pt (TorchScript), .onnx or an MLflow "
            "model directory"
        )
    run, classes, dims = load(path)
    known = dims and len(dims) == 3 and all(isinstance(d, int) and d > 0 for d in dims)
    shape = (dims[0], dims[2]) if known else None  # from [C, H, W] where the file gives all three
    # no class names: filled with indices once the number of outputs is known
    return run, [] if classes is None else [str(c) for c in classes], shape


def _load_torchscript(path: Path) -> tuple[Predictor, Any, Any]:
    extra = {"classes.json": "", "input.json": ""}
    try:
        with warnings.catch_warnings(action="ignore", category=FutureWarning):
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise SweeperError(
            f"predict: cannot load {path} as TorchScript ({first_line(exc)}); "
            "export it again with `sweeper export --format torchscript`"
        ) from None
    module.eval()
    info = json.loads(extra["input.json"]) if extra["input.json"] else {}
    classes = json.loads(extra["classes.json"]) if extra["classes.json"] else None

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run, classes, info.get("input_shape")


def _load_onnx(path: Path) -> tuple[Predictor, Any, Any]:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise SweeperError(
            f"predict: cannot load {path} as ONNX ({first_line(exc)}); "
            "export it again with `sweeper export --format onnx`"
        ) from None
    meta = session.get_modelmeta().custom_metadata_map
    images = session.get_inputs()[0]

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {images.name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run, json.loads(meta["classes"]) if "classes" in meta else None, images.shape[1:]


def _load_mlflow(path: Path) -> tuple[Predictor, Any, Any]:
    from sweeper.stores import tracking  # mlflow: only MLflow model directories need it

    try:  # sweeper's own code rebuilds it; nothing stored in the directory runs
        ensemble = tracking.read_model(path)
    except SweeperError as exc:
        raise SweeperError(f"predict: {exc}") from None
    channels, size = ensemble.input_shape

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return ensemble(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    return run, ensemble.classes, [channels, size, size]


def read_images(paths: list[str], channels: int, size: int) -> tuple[list[str], np.ndarray]:
    """Image files, or folders searched recursively for .jpg .jpeg .png .bmp .webp files, as
    float32 0..1 [N, channels, size, size] (converted to RGB or L and resized bilinearly)."""
    from PIL import Image, UnidentifiedImageError

    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(p for p in found if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise SweeperError(f"predict: {name} does not exist; give image files or folders")
    if not files:
        kinds = " ".join(IMAGE_SUFFIXES)
        raise SweeperError(
            f"predict: no images ({kinds}) found in {', '.join(paths) or 'no paths'}; "
            "give image files or folders that hold them"
        )
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert(mode).resize((size, size), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SweeperError(
                f"predict: cannot read image {file} ({first_line(exc)}); "
                "remove it or convert it to PNG or JPEG"
            ) from None
    return [str(f) for f in files], nchw(np.stack(arrays)).astype(np.float32) / 255


def predict(
    model_path: str, images: list[str], top: int = 1
) -> list[tuple[str, list[tuple[str, float]]]]:
    """Per image file: its `top` classes with their probabilities, most likely first."""
    if top < 1:
        raise SweeperError(f"predict: --top {top} must be at least 1")
    run, classes, shape = _load(Path(model_path))
    channels, size = shape or (3, 32)
    names, x = read_images(images, channels, size)
    probs = np.concatenate([run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
    labels = classes if len(classes) == probs.shape[1] else [str(i) for i in range(probs.shape[1])]
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [
        (name, [(labels[j], float(p[j])) for j in row])
        for name, p, row in zip(names, probs, order, strict=True)
    ]


def picked_model(name: str, sweep: SweepPaths, rule: str) -> tuple[Any, str]:
    """The model of the trial a --pick rule names, and how to call it."""
    from sweeper.spec.objectives import pick
    from sweeper.stores.storage import load_stored_study, make_storage
    from sweeper.stores.tracking.checkpoints import fetch_checkpoint  # MLflow: only for a pick

    study = load_stored_study(name, make_storage(sweep.storage_url), sweep.storage_url)
    trial = pick(study, rule)
    scores = ", ".join(
        f"{k}={v:.4g}" for k, v in zip(study.metric_names, trial.values, strict=True)
    )
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = fetch_checkpoint(
            sweep.tracking_uri, trial.user_attrs[Attr.CHECKPOINT], Path(folder)
        )
        return one_model(checkpoint), f"trial {trial.number} ({rule}: {scores})"


def export_study(
    name: str, sweep: SweepPaths, fmt: str, out: Path, alias: str, pick: str | None
) -> str:
    """`sweeper export`: the study's registered ensemble (`alias`), or the model of the trial a
    pick rule names, written as `fmt` to `out`; what was exported, in words."""
    from sweeper.stores import tracking

    if pick:
        model, what = picked_model(name, sweep, pick)
    else:  # rebuilt from tensors and JSON by sweeper's own code: nothing stored on the server runs
        model, what = tracking.load_registered(sweep.tracking_uri, name, alias), alias
    channels, size = model.input_shape
    example = torch.rand(2, channels, size, size)
    if fmt != "mlflow":
        path = export(model, fmt, out, example)
    else:  # written afresh: what the directory holds comes from this sweeper, not the server
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise SweeperError(f"export: {out} exists; give a new directory for the MLflow model")
        with replacing(out) as tmp:
            tracking.save_model(model, tmp, example.numpy())
        path = out
    return f"exported {name}@{what} to {path}"
