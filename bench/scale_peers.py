"""bench/scale.py's peers: the same one-second trials through what a user would write instead of
sweeper (issue 24), on the same kind of stores.

- Optuna + optuna-integration's MLflowCallback: `workers` processes on one Optuna storage, each
  running its share of the trials (study.optimize with the callback), one MLflow run a trial.
- Ray Tune: OptunaSearch + MLflowLoggerCallback, `workers` concurrent trials (one logical CPU
  each), reuse_actors=True, inside its own network namespace (Ray binds the machine's address).

A trial is bench/scale_study.py's: a linear classifier on 32 tiny images (its data function),
lr and weight decay sampled (TPE), one training pass that sleeps `trial_s`, then the validation
accuracy. With $SWEEPER_BENCH_IMAGES set (bench/scale.py --tiny), it is bench/tiny_study.py's
instead: one epoch of a 3072-32-10 MLP on 512 of those CIFAR-10 images, validated on 512 more,
dropout sampled too. Each peer's wall time counts from its start to its last trial's record.

With stores="postgres", each one gets fresh databases on the machine's PostgreSQL and an
`mlflow server` on one of them (Ray Tune's, started inside its namespace, reaches PostgreSQL
through its Unix socket).

    python bench/scale_peers.py optuna-worker STORAGE TRACKING_URI TRIALS TRIAL_S
    python bench/scale_peers.py ray-tune FOLDER TRACKING TRIALS WORKERS TRIAL_S
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
# As sweeper does: MLflow's telemetry thread (no use without a network) changes os.environ while
# the client reads it; one peer worker of 16 died of that KeyError on PostgreSQL.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
STUDY = "peer"
POSTGRES = "postgresql://postgres@127.0.0.1:5432"  # the machine's, trust auth
SOCKET = "host=/var/run/postgresql"  # the same server, reached from a network namespace too


def new_database(name: str) -> str:
    """A fresh, empty PostgreSQL database; its URL as a user types it."""
    engine = sqlalchemy.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{POSTGRES}/{name}"


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path) -> Iterator[str]:
    """A real `mlflow server` (2 workers, one per core) on `backend`; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(folder / f"mlflow-server-{port}.log", "w")  # noqa: SIM115 (open while it runs)
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / f"artifacts-{port}"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "2"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):
            if server.poll() is not None:
                sys.exit(f"mlflow server failed: {Path(log.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


def trial_accuracy(lr: float, weight_decay: float, trial_s: float) -> float:
    """bench/scale_study.py's trial without sweeper: one pass that waits trial_s seconds."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from scale_study import tiny_images

    train_x, train_y, val_x, val_y = (torch.as_tensor(a) for a in tiny_images())
    model = torch.nn.Linear(train_x[0].numel(), 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    time.sleep(trial_s)
    loss = torch.nn.functional.cross_entropy(model(train_x.flatten(1) / 255), train_y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        predicted = model(val_x.flatten(1) / 255).argmax(1)
    return float((predicted == val_y).float().mean())


def mlp_accuracy(lr: float, weight_decay: float, dropout: float) -> float:
    """bench/tiny_study.py's trial without sweeper, as a notebook writes it: one epoch of SGD
    (momentum 0.9, batches of 128) on the first 512 images, accuracy on the next 512."""
    import torch

    x, y = _tiny_images()
    train_x, train_y, val_x, val_y = x[:512], y[:512], x[512:1024], y[512:1024]
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3072, 32), torch.nn.ReLU(), torch.nn.Dropout(dropout),
        torch.nn.Linear(32, 10),
    )  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                                weight_decay=weight_decay)  # fmt: skip
    for batch in torch.randperm(len(train_x)).split(128):
        loss = torch.nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return float((model(val_x).argmax(1) == val_y).float().mean())


_IMAGES: list = []  # read once a process (not functools.cache: Ray pickles this module's code)


def _tiny_images():
    """The images of $SWEEPER_BENCH_IMAGES, normalized by their channels' mean and std."""
    import torch

    if not _IMAGES:
        images = np.load(os.environ["SWEEPER_BENCH_IMAGES"])
        x = torch.as_tensor(images["x"]).float() / 255
        mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
        _IMAGES.append(((x - mean) / std, torch.as_tensor(images["y"]).long()))
    return _IMAGES[0]


TINY = bool(os.environ.get("SWEEPER_BENCH_IMAGES"))  # bench/tiny_study.py's trials


def objective(trial: optuna.Trial, trial_s: float) -> float:
    lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    if TINY:
        return mlp_accuracy(lr, weight_decay, trial.suggest_float("dropout", 0.0, 0.5))
    return trial_accuracy(lr, weight_decay, trial_s)


def prepare_stores(storage: str, tracking_uri: str) -> None:
    """The stores, made once before the workers start: two processes creating one SQLite MLflow
    store at once crash one of them ('duplicate column name')."""
    import mlflow

    optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    client = mlflow.MlflowClient(tracking_uri)
    if client.get_experiment_by_name(STUDY) is None:
        client.create_experiment(STUDY)


def optuna_peer(
    folder: Path, trials: int, workers: int, trial_s: float, stores: str = "sqlite"
) -> dict[str, float]:
    """`workers` processes of Optuna + MLflowCallback; wall seconds."""
    if stores == "sqlite":
        storage = f"sqlite:///{folder / 'optuna-peer.db'}"
        return _optuna_peer(storage, f"sqlite:///{folder / 'mlflow-peer.db'}", trials, workers,
                            trial_s)  # fmt: skip
    storage = new_database("scale_peer_optuna")
    with mlflow_server(new_database("scale_peer_mlflow"), folder) as tracking_uri:
        return _optuna_peer(storage, tracking_uri, trials, workers, trial_s)


def _optuna_peer(
    storage: str, tracking_uri: str, trials: int, workers: int, trial_s: float
) -> dict[str, float]:
    prepare_stores(storage, tracking_uri)
    shares = [trials // workers + (i < trials % workers) for i in range(workers)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "optuna-worker",
                storage,
                tracking_uri,
                str(share),
                str(trial_s),
            ]
        )  # fmt: skip
        for share in shares
        if share
    ]
    if any(p.wait() for p in procs):
        sys.exit("bench/scale_peers.py: an Optuna peer worker failed")
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=STUDY, storage=storage)
    done = sum(t.state.name == "COMPLETE" for t in study.trials)
    return {"wall": wall, "trials": done}


def optuna_worker(storage: str, tracking_uri: str, trials: int, trial_s: float) -> None:
    from optuna_integration.mlflow import MLflowCallback

    warnings.filterwarnings("ignore", category=FutureWarning)  # "deprecated in v4.9.0"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a careful peer waits out SQLite's lock as sweeper does (Optuna's default gives up in 5 s)
    sqlite = storage.startswith("sqlite")
    rdb = optuna.storages.RDBStorage(
        storage, engine_kwargs={"connect_args": {"timeout": 120}} if sqlite else {}
    )
    study = optuna.load_study(study_name=STUDY, storage=rdb)
    callback = MLflowCallback(tracking_uri=tracking_uri, metric_name="val_acc")
    study.optimize(lambda t: objective(t, trial_s), n_trials=trials, callbacks=[callback])


def ray_peer(
    folder: Path, trials: int, workers: int, trial_s: float, stores: str = "sqlite"
) -> dict[str, float]:
    """Ray Tune in its own network namespace (only loopback up), as tests/test_ray.py runs Ray."""
    tracking = f"sqlite:///{folder / 'mlflow-ray.db'}"
    if stores == "postgres":  # the server starts inside, on the database's Unix socket
        name = new_database("scale_peer_ray").rpartition("/")[2]
        tracking = f"postgresql://postgres@/{name}?{SOCKET}"
    inside = (f"ip link set lo up && exec {sys.executable} {__file__} ray-tune {folder}"
              f" '{tracking}' {trials} {workers} {trial_s}")  # fmt: skip
    # A home of its own: Ray writes ~/.ray/auth_token for the local cluster it makes, and a
    # `ray start` of the same user later (tests/test_ray.py) fails on it ("InvalidAuthToken").
    home = folder / "ray-home"
    home.mkdir(exist_ok=True)
    done = subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "bash", "-c", inside],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "HOME": str(home)},
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"bench/scale_peers.py: the Ray Tune peer failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ray_tune(folder: Path, tracking: str, trials: int, workers: int, trial_s: float) -> None:
    if tracking.startswith("postgresql"):
        with mlflow_server(tracking, folder) as url:
            _ray_tune(folder, url, trials, workers, trial_s)
    else:
        _ray_tune(folder, tracking, trials, workers, trial_s)


def _ray_tune(folder: Path, tracking_uri: str, trials: int, workers: int, trial_s: float) -> None:
    import mlflow
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    mlflow.MlflowClient(tracking_uri).search_experiments()  # the store, made once
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)

    def trainable(config: dict) -> None:
        if TINY:
            accuracy = mlp_accuracy(config["lr"], config["weight_decay"], config["dropout"])
        else:
            accuracy = trial_accuracy(config["lr"], config["weight_decay"], trial_s)
        tune.report({"val_acc": accuracy})

    space = {"lr": tune.loguniform(1e-3, 1e-1), "weight_decay": tune.loguniform(1e-6, 1e-3)}
    if TINY:
        space["dropout"] = tune.uniform(0.0, 0.5)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="val_acc", mode="max"), num_samples=trials,
            max_concurrent_trials=workers, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            storage_path=str(folder / "ray-results"), verbose=0,
            callbacks=[MLflowLoggerCallback(tracking_uri=tracking_uri, experiment_name=STUDY)],
        ),
    )  # fmt: skip
    started = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - started
    done = sum(1 for r in results if r.error is None)
    print(json.dumps({"wall": wall, "trials": done}))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    command, *rest = sys.argv[1:]
    if command == "optuna-worker":
        optuna_worker(rest[0], rest[1], int(rest[2]), float(rest[3]))
    elif command == "ray-tune":
        ray_tune(Path(rest[0]), rest[1], int(rest[2]), int(rest[3]), float(rest[4]))
    else:
        sys.exit(__doc__)
