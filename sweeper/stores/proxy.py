"""`sweeper storage-proxy`: Optuna's gRPC storage proxy in front of one database.

Many workers then hold one connection pool between them instead of one each:
`optuna.storages.GrpcStorageProxy(host=..., port=...)` is the storage its clients open.
"""

from __future__ import annotations

import optuna
from optuna.storages import get_storage, run_grpc_proxy_server

from sweeper.errors import SweeperError
from sweeper.stores.storage import make_storage, redact


def serve_proxy(storage_url: str, host: str, port: int) -> None:
    """Serve the storage at `storage_url` on host:port until Ctrl-C."""
    if not 0 < port < 65536:
        raise SweeperError(f"--port={port} is invalid; it must be 1 to 65535")
    # Optuna's proxy is meant to wrap the cached storage of get_storage (fewer queries).
    storage = get_storage(make_storage(storage_url))
    optuna.logging.set_verbosity(optuna.logging.INFO)  # "Server started at host:port"
    print(f"sweeper: storage proxy for {redact(storage_url)} on {host}:{port}", flush=True)
    try:
        run_grpc_proxy_server(storage, host=host, port=port)
    except RuntimeError as exc:  # grpc: the port is taken or the address is not ours
        raise SweeperError(f"storage-proxy: cannot serve on {host}:{port}: {exc}") from None
