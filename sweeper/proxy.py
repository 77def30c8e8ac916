"""`sweeper storage-proxy`: Optuna's gRPC storage proxy in front of one database.

Many workers then hold one connection pool between them instead of one each:
`optuna.storages.GrpcStorageProxy(host=..., port=...)` is the storage its clients open.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import optuna
from optuna.storages import get_storage, run_grpc_proxy_server

from sweeper.errors import SweeperError
from sweeper.storage import make_storage, redact


def register(commands: Any) -> None:
    """Add the `storage-proxy` command to the `sweeper` subparsers."""
    proxy = commands.add_parser(
        "storage-proxy", help="serve an Optuna storage over gRPC to many workers"
    )
    stored = os.environ.get("SWEEPER_STORAGE")  # keeps a password off the command line
    proxy.add_argument("--storage", default=stored, required=stored is None,
                       help="Optuna storage URL to serve (default: $SWEEPER_STORAGE)")  # fmt: skip
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on")
    proxy.add_argument("--port", type=int, default=13000, help="port to listen on")
    proxy.set_defaults(func=cmd_storage_proxy)


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise SweeperError(f"--port={args.port} is invalid; it must be 1 to 65535")
    # Optuna's proxy is meant to wrap the cached storage of get_storage (fewer queries).
    storage = get_storage(make_storage(args.storage))
    optuna.logging.set_verbosity(optuna.logging.INFO)  # "Server started at host:port"
    print(
        f"sweeper: storage proxy for {redact(args.storage)} on {args.host}:{args.port}", flush=True
    )
    try:
        run_grpc_proxy_server(storage, host=args.host, port=args.port)
    except RuntimeError as exc:  # grpc: the port is taken or the address is not ours
        raise SweeperError(
            f"storage-proxy: cannot serve on {args.host}:{args.port}: {exc}"
        ) from None
    return 0
