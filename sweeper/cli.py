"""The `sweeper` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from sweeper.errors import SweeperError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except SweeperError as exc:
        print(f"sweeper: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sweeper: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweeper", description="Optuna sweeps of image-classification CNNs, tracked in MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one config and print its accuracy")
    train.add_argument("--config", help="YAML or JSON file of config keys (flags override it)")
    train.add_argument("--json", action="store_true", help="print one JSON line instead")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)
    return parser


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size for batch_size); unset flags stay unset."""
    from sweeper.config import TrainConfig

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


def config_from_args(args: argparse.Namespace) -> Any:
    from sweeper.config import TrainConfig, load_config_file

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    source = args.config or "flags"
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    if flags:
        source = f"{args.config} and flags" if args.config else "flags"
    return TrainConfig.from_dict({**values, **flags}, source=source)


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sweeper.data import load_images, split
    from sweeper.train import evaluate_test, resolve_device, train

    config = config_from_args(args)
    resolve_device(config.device)
    images = load_images(config.dataset, config.data_dir, config.image_size)
    data = split(images, config.val_size, config.train_size, config.split_seed)
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
        print(
            json.dumps(
                {
                    "config": config.to_dict(),
                    "status": result.status,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_val_acc": result.best_val_acc,
                    "test_acc": test_acc,
                    "seconds": result.seconds,
                    "split_hash": data.split_hash,
                }
            )
        )
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
