"""The `sweeper` command: every subcommand's flags, declared here; each command calls one
function below with plain arguments and turns a SweeperError into one line (exit code 2).
Commands import torch and MLflow inside themselves: `sweeper status`, and a launcher that
starts its workers, must not wait for them to load."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError, bad_value
from sweeper.interrupt import EXIT_INTERRUPTED
from sweeper.pool import forks
from sweeper.pool.interface import Pool
from sweeper.spec.study import load_by_name_or_file, load_study
from sweeper.stores.paths import MLFLOW_URL, SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage
from sweeper.training.config import TrainConfig, json_mapping

FLAG_TYPES = {"int": int, "float": float, "str": str, "dict[str, Any]": json_mapping}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # sweeper shows its own progress
    try:
        check_counts(args)
        code = args.func(args) or 0  # a command that prints what it did returns None
    except SweeperError as exc:
        print(f"sweeper: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("sweeper: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    if argv is None and args.command in ("launch", "worker"):
        if args.command == "launch":  # its workers have ended: their fork server may go
            forks.end_before_exit()
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
    adders = (add_train, add_launch, add_ensemble, add_worker, add_export, add_predict,
              add_status, add_gc, add_ui, add_report, add_dashboard, add_storage_proxy)  # fmt: skip
    for add in adders:
        add(commands)
    return parser


def command(commands: Any, name: str, help: str, run: Any) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=help)
    parser.set_defaults(func=run)
    return parser


def add_train(commands: Any) -> None:
    train = command(commands, "train", "train one config and print its accuracy", cmd_train)
    train.add_argument("--config", help="YAML or JSON file of config keys (flags override it)")
    train.add_argument("--json", action="store_true", help="print one JSON line instead")
    add_config_flags(train)
    train.add_argument("--from-run", help="retrain the config of this MLflow run (a trial)")
    add_store_flags(train, storage=False, what="MLflow store of --from-run")


def add_launch(commands: Any) -> None:
    launch = command(commands, "launch", "run a study on a worker pool", cmd_launch)
    launch.add_argument("study", help="a study file, e.g. studies/quickstart.py")
    add_sweep_flags(launch)
    add_pool_flags(launch, "trial")
    launch.add_argument("--no-ensemble", action="store_true", help="skip the seed ensemble")


def add_ensemble(commands: Any) -> None:
    ensemble = command(commands, "ensemble", "retrain top configs, average the seeds", cmd_ensemble)
    ensemble.add_argument("study", help="the study file (or its name, once launched)")
    add_sweep_flags(ensemble)
    ensemble.add_argument("--k", type=int, help="top configs to retrain (study default: 3)")
    ensemble.add_argument("--seeds", type=int, help="seeds per config (study default: 3)")
    ensemble.add_argument("--greedy", action="store_true", help="also greedy selection on val")
    add_pool_flags(ensemble, "member")


def add_worker(commands: Any) -> None:
    worker = command(commands, "worker", "join a running study (same storage)", cmd_worker)
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


def add_sweep_flags(parser: argparse.ArgumentParser) -> None:
    """Where the sweep lives, and how to scale a study down without editing it."""
    add_store_flags(parser)
    parser.add_argument("--trials", type=int, help="finished trials to reach (study budget)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    parser.add_argument("--epochs", type=int, help="maximum epochs per trial")
    parser.add_argument("--train-size", type=int, help="a deterministic slice of the train split")
    parser.add_argument("--val-size", type=float, help="validation images (or a fraction below 1)")
    parser.add_argument("--data-dir", help="where datasets are found (default: $SWEEPER_DATA_DIR)")


def add_pool_flags(parser: argparse.ArgumentParser, unit: str) -> None:
    """Where the workers run, how many, and how they show progress."""
    parser.add_argument("--workers", type=int, help="worker processes (default: 1 per GPU, or 1)")
    parser.add_argument("--trials-per-gpu", type=int, default=1, help=f"{unit}s packed on one GPU")
    parser.add_argument("--no-progress", action="store_true", help=f"a line per {unit}, no bar")
    parser.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS", help="workers on a"
                        " Ray cluster: auto, ray://host:10001 or host:6379 (with a PostgreSQL"
                        " --storage and an http --tracking-uri)")  # fmt: skip


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size for batch_size); unset flags stay unset."""
    group = parser.add_argument_group("config keys (see sweeper/training/config.py)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).replace(" | None", "")
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("list"):
            options.update(nargs="+", type=int if kind == "list[int]" else float)
        else:
            options["type"] = FLAG_TYPES[kind]
        group.add_argument(flag, **options)


def add_export(commands: Any) -> None:
    export = command(commands, "export", "write the registered ensemble to a file", cmd_export)
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


def add_predict(commands: Any) -> None:
    predict = command(commands, "predict", "classify images with an exported model", cmd_predict)
    predict.add_argument("model", help="a .pt or .onnx export, or an MLflow model directory")
    predict.add_argument("images", nargs="+", help="image files or folders")
    predict.add_argument("--top", type=int, default=1, help="classes to show per image")


def add_status(commands: Any) -> None:
    status = command(commands, "status", "print the trials of a study as a table", cmd_status)
    status.add_argument("study", help="a study name or file")
    add_store_flags(status, tracking=False)
    fmt = status.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON list, one object per trial")
    fmt.add_argument("--csv", action="store_true", help="CSV")
    status.add_argument("--top", type=int, default=20, help="rows of the text table (0: all)")


def add_gc(commands: Any) -> None:
    gc = command(commands, "gc", "delete the checkpoints a study no longer needs", cmd_gc)
    gc.add_argument("study", help="a study name or file")
    add_store_flags(gc)
    gc.add_argument("--keep", type=int, default=3, help="top trials whose best weights stay, "
                    "besides the ensemble's sources and members (default: 3)")  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")


def add_ui(commands: Any) -> None:
    ui = command(commands, "ui", "the MLflow UI on the sweep's store, on 127.0.0.1", cmd_ui)
    ui.add_argument("study", nargs="?", help="the study to open (default: the last one run)")
    add_store_flags(ui, storage=False)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--workers", type=int, default=1, help="server processes (default: 1)")


def add_report(commands: Any) -> None:
    report = command(commands, "report", "render a study's dashboard, or a comparison of "
                     "studies, to an HTML page", cmd_report)  # fmt: skip
    report.add_argument(
        "studies", nargs="+", metavar="study",
        help="a study name or file; two or more: compare them (all in the same stores)",
    )  # fmt: skip
    report.add_argument(
        "--dashboard", help="a dashboard file or a shipped name: evaluation (the default for "
        "one study), sweep, compare (the default for several)"
    )  # fmt: skip
    report.add_argument(
        "--out", help="HTML file (default: <dir>/reports/<study>-<dashboard>.html, "
        "<A>-vs-<B>-compare.html for several)"
    )  # fmt: skip
    add_store_flags(report)
    report.add_argument("--mlflow-url", default=MLFLOW_URL, help="MLflow UI that the run links"
                        " point to (default: %(default)s, as `sweeper ui`)")  # fmt: skip


def add_dashboard(commands: Any) -> None:
    dashboard = command(commands, "dashboard", "the live optuna-dashboard on the study",
                        cmd_dashboard)  # fmt: skip
    dashboard.add_argument("study", help="a study name or file")
    add_store_flags(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)


def add_storage_proxy(commands: Any) -> None:
    proxy = command(commands, "storage-proxy", "serve an Optuna storage over gRPC to many "
                    "workers", cmd_storage_proxy)  # fmt: skip
    stored = os.environ.get("SWEEPER_STORAGE")  # keeps a password off the command line
    proxy.add_argument("--storage", default=stored, required=stored is None,
                       help="Optuna storage URL to serve (default: $SWEEPER_STORAGE)")  # fmt: skip
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on")
    proxy.add_argument("--port", type=int, default=13000, help="port to listen on")


def add_store_flags(parser: argparse.ArgumentParser, storage: bool = True, tracking: bool = True,
                    what: str = "MLflow tracking URI") -> None:  # fmt: skip
    """--dir, and the --storage and --tracking-uri that replace its stores. A URL with a password
    given in the environment stays off the command line, which `ps` shows."""
    parser.add_argument("--dir", default="sweeps", help="sweep directory (default: ./sweeps)")
    if storage:
        default = "$SWEEPER_STORAGE, else <dir>/optuna.db"
        parser.add_argument("--storage", default=os.environ.get("SWEEPER_STORAGE"),
                            help=f"Optuna storage URL (default: {default})")  # fmt: skip
    if tracking:
        default = "$SWEEPER_TRACKING_URI, else <dir>/mlflow.db"
        parser.add_argument("--tracking-uri", default=os.environ.get("SWEEPER_TRACKING_URI"),
                            help=f"{what} (default: {default})")  # fmt: skip


def check_counts(args: argparse.Namespace) -> None:
    """Counts given as flags (--trials, --workers, ...) are 1 or more; --val-size is valid."""
    for key in ("trials", "epochs", "train_size", "threads", "workers", "k", "seeds"):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise bad_value("", f"--{key.replace('_', '-')}", value, "it must be 1 or more")
    if getattr(args, "val_size", None) is not None:  # else every trial would fail on it
        TrainConfig(val_size=args.val_size).validate("--val-size")


def sweep_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys a sweep's flags set for every trial."""
    keys = ("epochs", "train_size", "val_size", "data_dir", "threads")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def pool_of(args: argparse.Namespace, paths: SweepPaths) -> Pool:
    """Where the workers run, chosen once: this machine, or the Ray cluster of --ray."""
    from sweeper.sweep.notebook import pool_of as pool_for  # the launcher's side only

    return pool_for(paths, args.ray, args.workers, args.trials_per_gpu)


def cmd_launch(args: argparse.Namespace) -> int:
    from sweeper.sweep.launch import launch

    spec = load_study(args.study)
    paths = SweepPaths.resolve(args.dir, args.storage, args.tracking_uri)
    return launch(
        spec, paths, pool_of(args, paths),
        budget=args.trials if args.trials is not None else spec.trials,
        timeout=args.timeout if args.timeout is not None else spec.timeout,
        overrides=sweep_overrides(args), progress=not args.no_progress and sys.stderr.isatty(),
        ensemble=None if args.no_ensemble else spec.ensemble,
    )  # fmt: skip


def cmd_worker(args: argparse.Namespace) -> int:
    from sweeper.worker.loop import join  # torch and MLflow: workers only

    return join(
        args.study, args.dir, storage=args.storage, tracking_uri=args.tracking_uri,
        from_launcher=args.from_launcher, ensemble=args.ensemble, device=args.device,
        worker=args.worker_name, budget=args.trials, timeout=args.timeout,
        deadline=args.deadline, overrides=sweep_overrides(args), packed=args.packed,
    )  # fmt: skip


def cmd_ensemble(args: argparse.Namespace) -> int:
    from sweeper.sweep.ensemble import ensemble_again

    settings = {k: getattr(args, k) for k in ("k", "seeds", "epochs") if getattr(args, k)}
    paths = SweepPaths.resolve(args.dir, args.storage, args.tracking_uri)
    return ensemble_again(
        args.study, paths, pool_of(args, paths),
        settings={**settings, "greedy": True} if args.greedy else settings,
        overrides={k: v for k, v in sweep_overrides(args).items() if k != "epochs"},
        progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    from sweeper.ensemble.export import export_study

    _, name = load_by_name_or_file(args.study)
    stores = SweepPaths.existing if args.pick else SweepPaths.resolve  # a pick reads the trials
    sweep = stores(args.dir, args.storage, args.tracking_uri)
    print(export_study(name, sweep, args.format, Path(args.out), args.alias, args.pick))


def cmd_predict(args: argparse.Namespace) -> None:
    from sweeper.ensemble.export import predict

    for file, top in predict(args.model, args.images, top=args.top):
        print(f"{file}: {', '.join(f'{label} {p:.3f}' for label, p in top)}")


def cmd_status(args: argparse.Namespace) -> None:
    from sweeper.sweep.progress import status_text

    _, name = load_by_name_or_file(args.study)
    sweep = SweepPaths.existing(args.dir, args.storage, None)
    study = load_stored_study(name, make_storage(sweep.storage_url), sweep.storage_url)
    print(status_text(study, "json" if args.json else "csv" if args.csv else "text", args.top))


def cmd_gc(args: argparse.Namespace) -> None:
    from sweeper.sweep.retention import collect_garbage  # MLflow: loaded on demand

    if args.keep < 0:
        raise bad_value("", "--keep", args.keep, "it must be 0 or more")
    _, name = load_by_name_or_file(args.study)
    sweep = SweepPaths.existing(args.dir, args.storage, args.tracking_uri)
    storage = make_storage(sweep.storage_url)
    load_stored_study(name, storage, sweep.storage_url)  # one line if there is no such study
    collect_garbage(storage, name, sweep, args.keep, args.dry_run)


def cmd_ui(args: argparse.Namespace) -> int:
    from sweeper.report.ui import serve

    sweep = SweepPaths.resolve(args.dir, None, args.tracking_uri)
    study = load_by_name_or_file(args.study)[1] if args.study else None
    return serve(sweep, study, args.host, args.port, args.workers)


def cmd_report(args: argparse.Namespace) -> None:
    from sweeper.report.render import write_report

    names = [load_by_name_or_file(target)[1] for target in args.studies]
    stores = SweepPaths.existing(args.dir, args.storage, args.tracking_uri)
    files, logged = write_report(names, stores, args.dashboard, args.out, args.mlflow_url)
    print(f"report: {' and '.join(str(p) for p in files)}")
    for name, url in logged.items():
        if url is None:
            print(f"report: no launch run of '{name}' in MLflow; the report is not logged there")
        else:
            print(f"report: logged to {url} (report/)")


def cmd_dashboard(args: argparse.Namespace) -> None:
    from sweeper.report.render import serve_dashboard

    _, name = load_by_name_or_file(args.study)
    serve_dashboard(SweepPaths.existing(args.dir, args.storage, args.tracking_uri), name,
                    args.host, args.port)  # fmt: skip


def cmd_storage_proxy(args: argparse.Namespace) -> None:
    from sweeper.stores.proxy import serve_proxy

    serve_proxy(args.storage, args.host, args.port)


def cmd_train(args: argparse.Namespace) -> int:
    from sweeper.training.single import train_one

    run = None
    if args.from_run:
        from sweeper.stores import tracking

        sweep = SweepPaths.resolve(args.dir, None, args.tracking_uri)
        run = tracking.run_config(sweep.tracking_uri, args.from_run)
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.field_names()}
    config = TrainConfig.merged(args.config, run, args.from_run, flags)
    return train_one(config, as_json=args.json)


if __name__ == "__main__":
    sys.exit(main())
