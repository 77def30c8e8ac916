"""Workers on a Ray cluster: one Ray actor per worker slot runs the same `sweeper worker` command
as a child process on its node, with the launch context on its stdin, so a worker does exactly
what a local one does. The launcher supervises the actors as it supervises local processes;
Ray restarts an actor whose process died, and Optuna's heartbeats retry the trial it held.

Every node must reach the stores and the sweep directory: PostgreSQL for Optuna, an `mlflow
server` for MLflow, and a --dir on storage that every node mounts (the epoch checkpoints).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError
from sweeper.pool.interface import MAX_WORKER_RESTARTS, Slots
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import redact

LOST = -1  # the exit code of a worker whose actor died and was restarted by Ray without it
START_TIMEOUT_S = 600  # a worker slot that no node has room for in this time is an error
STOP_TIMEOUT_S = 60  # then the actors are killed, and their workers with them
PR_SET_PDEATHSIG = 1


class RayPool:
    """Workers on the Ray cluster at `address`: one actor per slot, spread over the nodes. Each
    phase gets new actors; stop() lets go of them."""

    local = False  # the cluster's GPUs are not the launcher's
    threads = 1  # each actor takes one CPU

    def __init__(self, paths: SweepPaths, address: str, workers: int | None,
                 trials_per_gpu: int) -> None:  # fmt: skip
        check_shared_stores(paths.storage_url, paths.tracking_uri)
        self.ray = connect(address)
        self.devices, self.resources = slots(self.ray, workers, trials_per_gpu)
        self.marker = mark_shared(paths.dir)
        self.packed = self.devices[0].startswith("cuda") and trials_per_gpu > 1
        self.actors: list[Any] = []
        self.slots = Slots.none()

    def start(self, commands: list[list[str]]) -> None:
        slot = self.ray.remote(max_restarts=MAX_WORKER_RESTARTS, max_task_retries=-1)(Slot)
        self.actors = [
            slot.options(scheduling_strategy="SPREAD", **self.resources).remote() for _ in commands
        ]

        def spawn(i: int) -> RemoteProcess:  # the node's own python runs `-m sweeper.cli ...`
            return RemoteProcess(self.ray, self.actors[i], commands[i][1:], self.marker)

        self.slots = Slots(spawn, lambda process, line: process.actor.hand.remote(line),
                           len(commands))  # fmt: skip

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)  # every look at a worker is a call to its actor

    def stop(self) -> None:
        """Stop every worker (each puts its trial back), then kill the actors."""
        try:
            stopping = [actor.stop.remote() for actor in self.actors]
            self.ray.wait(stopping, num_returns=len(stopping), timeout=STOP_TIMEOUT_S)
        finally:
            for actor in self.actors:
                self.ray.kill(actor, no_restart=True)


def check_shared_stores(storage_url: str, tracking_uri: str) -> None:
    """Stores that every node of a cluster reaches: not a file on the launcher's disk."""
    if storage_url.startswith("sqlite"):
        raise SweeperError(
            f"--ray: the Optuna storage {redact(storage_url)} is a file on this machine; give"
            " every node one PostgreSQL database: --storage postgresql://user@host/db"
        )
    if not tracking_uri.startswith(("http://", "https://")):
        raise SweeperError(
            f"--ray: the MLflow store {tracking_uri} is local to this machine; run an `mlflow"
            " server` that every node reaches: --tracking-uri http://host:5000"
        )


def connect(address: str) -> Any:
    """Join the Ray cluster at `address` (auto, ray://host:10001 or host:6379); the ray module."""
    try:
        import ray
    except ImportError:
        raise SweeperError("--ray needs Ray: pip install 'sweeper[ray]'") from None
    if address != "auto":  # Ray itself retries an address where nothing listens for ever
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as error:
            raise SweeperError(f"--ray {address}: no Ray cluster there ({error})") from None
    try:
        ray.init(
            address=address, log_to_driver=True, logging_level="WARNING", configure_logging=False
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SweeperError(f"--ray {address}: no Ray cluster there ({error})") from None
    return ray


def slots(ray: Any, workers: int | None, trials_per_gpu: int) -> tuple[list[str], dict[str, float]]:
    """The devices of the worker slots and the Ray resources of each: one slot per GPU in the
    cluster (times trials_per_gpu, each 1/K of a GPU), else one per CPU; --workers overrides."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    if gpus:
        count = workers or gpus * trials_per_gpu
        return ["cuda:0"] * count, {"num_gpus": 1 / trials_per_gpu, "num_cpus": 1}
    if not cpus:
        raise SweeperError("--ray: the cluster has neither GPUs nor CPUs to run workers on")
    return ["cpu"] * (workers or cpus), {"num_cpus": 1}


def mark_shared(directory: Path) -> tuple[str, str]:
    """A marker file in --dir that every worker must read: the sweep directory is shared."""
    path = directory / f".ray-shared-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    path.write_text(token)
    return str(path), token


def readable(marker: tuple[str, str]) -> bool:
    """Whether this node reads the launcher's marker file: the sweep directory is shared."""
    path, token = marker
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


class Slot:
    """A Ray actor: one worker slot on one node, running `sweeper worker` as its child."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        # what the worker wrote, until the launcher's next poll takes it: (stream, line)
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=10_000)
        self.readers: list[threading.Thread] = []
        self.node = ""

    def start(self, args: list[str], marker: tuple[str, str]) -> str | None:
        """Start the worker (python -m sweeper.cli worker ...); an error line if this node cannot
        read the sweep directory."""
        import ray

        node = ray.get_runtime_context().get_node_id()
        path, _ = marker
        if not readable(marker):
            return (
                f"--ray: the worker on node {node[:8]} cannot read {path}: give a --dir on"
                " storage that every node mounts at the same path (NFS, a shared volume)"
            )
        env = {**os.environ, "SWEEPER_NODE": node}
        self.node = node[:8]
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            preexec_fn=_die_with_parent,
        )
        # The launcher prints these itself, each with its node: Ray's forwarding of an actor's
        # output to the driver brought the head node's lines only.
        for stream, pipe in (("out", self.process.stdout), ("err", self.process.stderr)):
            reader = threading.Thread(target=self._read, args=(stream, pipe), daemon=True)
            reader.start()
            self.readers.append(reader)
        return None

    def _read(self, stream: str, pipe: Any) -> None:
        for line in pipe:
            self.lines.append((stream, line.rstrip("\n")))

    def hand(self, line: str) -> None:
        """Give the worker its launch context; one that already died is started again."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(line)
                self.process.stdin.close()

    def poll(self) -> tuple[int | None, list[tuple[str, str]]]:
        """The worker's exit code (None while it runs) and what it wrote since the last poll."""
        code = LOST if self.process is None else self.process.poll()
        if code is not None:  # its last lines
            for reader in self.readers:
                reader.join(timeout=5)
        lines = [self.lines.popleft() for _ in range(len(self.lines))]
        return code, [(stream, f"[node {self.node}] {line}") for stream, line in lines]

    def stop(self) -> None:
        """SIGTERM: the worker puts its trial back in the queue and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait()


def _die_with_parent() -> None:
    """The worker gets SIGTERM when its actor dies (killed by Ray or by a signal)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class RemoteProcess:
    """A worker process on a Ray node, as much of a subprocess.Popen as the supervisor looks at."""

    def __init__(self, ray: Any, actor: Any, args: list[str], marker: tuple[str, str]) -> None:
        self.ray, self.actor = ray, actor
        self.started = actor.start.remote(args, marker)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.started is not None:
            started, self.started = self.started, None
            try:
                error = self.ray.get(started, timeout=START_TIMEOUT_S)
            except self.ray.exceptions.GetTimeoutError:
                raise SweeperError(
                    f"--ray: no node had room for a worker in {START_TIMEOUT_S} s; fewer --workers"
                ) from None
            if error:
                raise SweeperError(error)
        if self.returncode is None:
            self.returncode, lines = self.ray.get(self.actor.poll.remote())
            for stream, line in lines:
                print(line, file=sys.stdout if stream == "out" else sys.stderr, flush=True)
        return self.returncode
