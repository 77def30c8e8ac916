"""The `sweeper` command: parses, calls one module, turns a SweeperError into one line.

Commands import torch and MLflow (through train, export, tracking) inside themselves: `sweeper
status` and a launcher that starts its workers must not wait for them to load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from sweeper import proxy, report
from sweeper.config import TrainConfig, load_config_file
from sweeper.data import split_of
from sweeper.errors import SweeperError, bad_value
from sweeper.launch import ensemble_again, join, launch
from sweeper.paths import SweepPaths, add_storage_flag, add_store_flags, add_tracking_flag
from sweeper.pool import Remote, default_devices
from sweeper.progress import trials_table
from sweeper.ray_pool import ray_pool
from sweeper.storage import load_stored_study, make_storage
from sweeper.study import load_by_name_or_file, load_study


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweeper shows its own progress
    try:
        check_counts(args)
        code = args.func(args)
    except SweeperError as exc:
        print(f"sweeper: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("sweeper: interrupted", file=sys.stderr)
        code = 130
    if argv is None and args.command in ("launch", "worker"):
        # Everything is stored by now; skip the second or more of tearing down torch and MLflow.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeper", description="Optuna sweeps of image-classification CNNs, tracked in MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_training_commands(commands)
    add_result_commands(commands)
    report.register(commands)
    proxy.register(commands)
    return parser


def add_training_commands(commands: Any) -> None:
    """train, launch, ensemble and worker: the commands that train."""
    train = commands.add_parser("train", help="train one config and print its accuracy")
    train.add_argument("--config", help="YAML or JSON file of config keys (flags override it)")
    train.add_argument("--json", action="store_true", help="print one JSON line instead")
    add_config_flags(train)
    train.add_argument("--from-run", help="retrain the config of this MLflow run (a trial)")
    add_tracking_flag(train, "MLflow store of --from-run")
    train.add_argument("--dir", default="sweeps", help="sweep directory of --from-run")
    train.set_defaults(func=cmd_train)

    launch = commands.add_parser("launch", help="run a study on a worker pool")
    launch.add_argument("study", help="a study file, e.g. studies/quickstart.py")
    add_sweep_flags(launch)
    add_pool_flags(launch, "trial")
    launch.add_argument("--no-ensemble", action="store_true", help="skip the seed ensemble")
    add_ray_flag(launch)
    launch.set_defaults(func=cmd_launch)

    ensemble = commands.add_parser("ensemble", help="retrain the top configs with seeds, average")
    ensemble.add_argument("study", help="the study file (or its name, once launched)")
    add_sweep_flags(ensemble)
    ensemble.add_argument("--k", type=int, help="top configs to retrain (study default: 3)")
    ensemble.add_argument("--seeds", type=int, help="seeds per config (study default: 3)")
    ensemble.add_argument("--greedy", action="store_true", help="also greedy selection on val")
    add_pool_flags(ensemble, "member")
    add_ray_flag(ensemble)
    ensemble.set_defaults(func=cmd_ensemble)

    worker = commands.add_parser("worker", help="join a running study (same storage)")
    worker.add_argument("study", help="the study file")
    add_sweep_flags(worker)
    worker.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: auto)")
    worker.add_argument("--worker-name", default=None, help="name in tags (default: host-pid)")
    worker.add_argument("--threads", type=int, help="CPU threads for training")
    # A launcher's worker starts before its study exists and reads the MLflow ids on stdin.
    worker.add_argument("--from-launcher", action="store_true", help=argparse.SUPPRESS)
    worker.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    worker.add_argument("--ensemble", action="store_true", help="train the ensemble's members")
    worker.add_argument("--packed", action="store_true", help="this GPU is shared with others")
    worker.set_defaults(func=cmd_worker)


def add_result_commands(commands: Any) -> None:
    """export, predict, status and ui: the commands that read what a sweep stored."""
    export = commands.add_parser("export", help="write the study's registered ensemble to a file")
    export.add_argument("study", help="the study name (or file)")
    export.add_argument("--format", required=True, choices=["torchscript", "onnx", "mlflow"])
    export.add_argument("--out", required=True, help="output file (.pt, .onnx) or directory")
    add_store_flags(export)  # the storage is read for --pick
    export.add_argument("--alias", default="champion", help="registered model alias")
    export.add_argument(
        "--pick", metavar="RULE", help="export one trial's model instead of the ensemble, of a"
        " study scored on cost: 'smallest within 1.0' (the fewest parameters within 1 point of"
        " the best validation accuracy) or 'fastest within 1.0' (the lowest latency_ms)"
    )  # fmt: skip
    export.set_defaults(func=cmd_export)

    predict = commands.add_parser("predict", help="classify image files with an exported model")
    predict.add_argument("model", help="a .pt or .onnx export, or an MLflow model directory")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--top", type=int, default=1, help="classes to show per image")
    predict.set_defaults(func=cmd_predict)

    status = commands.add_parser("status", help="print the trials of a study as a table")
    status.add_argument("study", help="a study name or file")
    status.add_argument("--dir", default="sweeps", help="sweep directory (default: ./sweeps)")
    add_storage_flag(status)
    fmt = status.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per trial")
    fmt.add_argument("--csv", action="store_true", help="CSV")
    status.set_defaults(func=cmd_status)

    gc = commands.add_parser("gc", help="delete the checkpoints a study no longer needs")
    gc.add_argument("study", help="a study name or file")
    add_store_flags(gc)
    gc.add_argument("--keep", type=int, default=3, help="top trials whose best weights stay, "
                    "besides the ensemble's sources and members (default: 3)")  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    gc.set_defaults(func=cmd_gc)

    ui = commands.add_parser("ui", help="the MLflow UI on the sweep's store, on 127.0.0.1")
    ui.add_argument("study", nargs="?", help="the study to open (default: the last one run)")
    add_store_flags(ui, storage=False)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")
    ui.set_defaults(func=cmd_ui)


def add_pool_flags(parser: argparse.ArgumentParser, unit: str) -> None:
    """How many workers train the trials (or members), and how they show progress."""
    parser.add_argument("--workers", type=int, help="worker processes (default: 1 per GPU, or 1)")
    parser.add_argument("--trials-per-gpu", type=int, default=1, help=f"{unit}s packed on one GPU")
    parser.add_argument("--no-progress", action="store_true", help=f"a line per {unit}, no bar")


def add_ray_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ray", nargs="?", const="auto", metavar="ADDRESS",
        help="workers on a Ray cluster: auto, ray://host:10001 or host:6379 (with a PostgreSQL"
        " --storage and an http --tracking-uri)",
    )  # fmt: skip


def pool_of(args: argparse.Namespace, paths: SweepPaths) -> tuple[list[str], Remote | None]:
    """The devices of the workers, local or on the Ray cluster of --ray (then how to start them)."""
    if args.ray is not None:
        return ray_pool(paths, args.ray, args.workers, args.trials_per_gpu)
    return default_devices(args.workers, args.trials_per_gpu), None


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """Where the sweep lives, and how to scale a study down without editing it."""
    add_store_flags(parser)
    parser.add_argument("--trials", type=int, help="finished trials to reach (study budget)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    parser.add_argument("--epochs", type=int, help="maximum epochs per trial")
    parser.add_argument("--train-size", type=int, help="a deterministic slice of the train split")
    parser.add_argument("--data-dir", help="where datasets are found (default: $SWEEPER_DATA_DIR)")


def check_counts(args: argparse.Namespace) -> None:
    """Counts given as flags (--trials, --workers, ...) are 1 or more."""
    for key in ("trials", "epochs", "train_size", "threads", "workers", "k", "seeds"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise bad_value("", f"--{key.replace('_', '-')}", value, "it must be 1 or more")


def sweep_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys a sweep's flags set for every trial."""
    keys = ("epochs", "train_size", "data_dir", "threads")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def cmd_launch(args: argparse.Namespace) -> int:

    study = load_study(args.study)
    paths = SweepPaths.resolve(args.dir, args.storage, args.tracking_uri)
    devices, remote = pool_of(args, paths)
    return launch(
        study,
        paths,
        devices=devices,
        remote=remote,
        budget=args.trials if args.trials is not None else study.trials,
        timeout=args.timeout if args.timeout is not None else study.timeout,
        overrides=sweep_overrides(args),
        progress=not args.no_progress and sys.stderr.isatty(),
        ensemble=None if args.no_ensemble else study.ensemble,
    )


def cmd_worker(args: argparse.Namespace) -> int:

    return join(args, sweep_overrides(args))


def cmd_ensemble(args: argparse.Namespace) -> int:

    settings = {k: getattr(args, k) for k in ("k", "seeds", "epochs") if getattr(args, k)}
    paths = SweepPaths.resolve(args.dir, args.storage, args.tracking_uri)
    devices, remote = pool_of(args, paths)
    return ensemble_again(
        args.study,
        paths,
        devices=devices,
        remote=remote,
        settings={**settings, "greedy": True} if args.greedy else settings,
        overrides={k: v for k, v in sweep_overrides(args).items() if k != "epochs"},
        progress=not args.no_progress and sys.stderr.isatty(),
    )


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from sweeper import tracking
    from sweeper.atomic import replacing
    from sweeper.export import export, picked_model

    _, name = load_by_name_or_file(args.study)
    stores = SweepPaths.existing if args.pick else SweepPaths.resolve  # a pick reads the trials
    sweep = stores(args.dir, args.storage, args.tracking_uri)
    out = Path(args.out)
    if args.pick:
        model, what = picked_model(name, sweep, args.pick)
    else:  # rebuilt from tensors and JSON by sweeper's own code: nothing stored on the server runs
        model, what = tracking.load_registered(sweep.tracking_uri, name, args.alias), args.alias
    channels, size = model.input_shape
    example = torch.rand(2, channels, size, size)
    if args.format != "mlflow":
        path = export(model, args.format, out, example)
    else:  # written afresh: what the directory holds comes from this sweeper, not the server
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise SweeperError(f"export: {out} exists; give a new directory for the MLflow model")
        with replacing(out) as tmp:
            tracking.save_model(model, tmp, example.numpy())
        path = out
    print(f"exported {name}@{what} to {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sweeper.export import predict

    for file, top in predict(args.model, args.images, top=args.top):
        shown = ", ".join(f"{label} {p:.3f}" for label, p in top)
        print(f"{file}: {shown}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:

    _, name = load_by_name_or_file(args.study)
    sweep = SweepPaths.existing(args.dir, args.storage, None)
    study = load_stored_study(name, make_storage(sweep.storage_url), sweep.storage_url)
    table = trials_table(study)
    if args.json:
        print(table.to_json(orient="records"))
    elif args.csv:
        print(table.to_csv(index=False), end="")
    else:
        print(table.to_string(index=False, na_rep="") if not table.empty else "no trials yet")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from sweeper import retention  # MLflow: loaded on demand

    if args.keep < 0:
        raise bad_value("", "--keep", args.keep, "it must be 0 or more")
    _, name = load_by_name_or_file(args.study)
    sweep = SweepPaths.existing(args.dir, args.storage, args.tracking_uri)
    storage = make_storage(sweep.storage_url)
    load_stored_study(name, storage, sweep.storage_url)  # one line if there is no such study
    removed = retention.sweep_disk(storage, name, sweep, args.keep, args.dry_run)
    for item in removed:
        print(f"{'would delete' if args.dry_run else 'deleted'} {item.what}"
              f" ({item.size / 1e6:.1f} MB)")  # fmt: skip
    print(f"sweeper gc {name}: {retention.describe(removed, args.dry_run)}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from sweeper import ui

    sweep = SweepPaths.resolve(args.dir, None, args.tracking_uri)
    study = load_by_name_or_file(args.study)[1] if args.study else None
    return ui.serve(sweep, study, args.host, args.port, args.workers)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size for batch_size); unset flags stay unset."""
    group = parser.add_argument_group("config keys (see sweeper/config.py)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list"):
            options.update(nargs="+", type=int if kind == "list[int]" else float)
        else:
            options["type"] = {"int": int, "float": float, "str": str}[kind]
        group.add_argument(flag, **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    if args.from_run:
        from sweeper import tracking

        sweep = SweepPaths.resolve(args.dir, None, args.tracking_uri)
        values = {**tracking.run_config(sweep.tracking_uri, args.from_run), **values}
    source = args.config or (f"run {args.from_run}" if args.from_run else "flags")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    if flags:
        source = f"{args.config} and flags" if args.config else "flags"
    return TrainConfig.from_dict({**values, **flags}, source=source)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sweeper.train import evaluate_test, resolved, train

    config = resolved(config_from_args(args))  # what this run uses, auto settings decided
    data = split_of(config)
    bar = tqdm(total=config.epochs, desc=config.model, unit="epoch", disable=args.json, leave=True)

    def show(metrics: dict[str, float], _state: Any) -> bool:
        bar.update(1)
        bar.set_postfix(
            loss=f"{metrics['train_loss']:.3f}",
            val_acc=f"{metrics['val_acc']:.4f}",
            img_s=f"{metrics['images_per_s']:.0f}",
        )
        return False

    result = train(config, data, callback=show)
    bar.close()
    test_acc = evaluate_test(result, data, config) if result.best_epoch else None
    if args.json:
        keys = ("status", "history", "best_epoch", "best_val_acc", "seconds")
        report = {"config": config.to_dict(), **{k: getattr(result, k) for k in keys}}
        print(json.dumps({**report, "test_acc": test_acc, "split_hash": data.split_hash}))
    else:
        print(f"status: {result.status} after {result.seconds:.1f} s")
        if result.best_epoch:
            print(
                f"validation accuracy: {result.best_val_acc:.4f} (best epoch {result.best_epoch})"
            )
            print(f"test accuracy: {test_acc:.4f}")
    return 0 if result.status != "diverged" else 1


if __name__ == "__main__":
    sys.exit(main())
