"""A sweep on a two-node Ray cluster, run by tests/test_ray.py inside network and process
namespaces of its own (`unshare --net --pid`): nothing it starts reaches beyond loopback, and
everything it starts dies with it.

It starts a throwaway PostgreSQL cluster, a real `mlflow server` on it, a Ray head and a second
Ray node (one CPU each), then:
1. `sweeper launch --ray` of six 2-epoch quickstart trials; one worker is killed with SIGKILL
   after the first epoch of its trial; then the launch's ensemble (2 configs x 2 seeds);
2. a second launch of the same study (12 trials) that gets SIGINT while its workers train.
It prints one JSON object of what it saw; the test asserts on it.

python tests/ray_scenario.py OUT_DIR [--bench]: --bench times the same sweep with --ray and
with local workers instead (bench/ray_launch.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import sqlalchemy as sa
from helpers import QUICKSTART, SWEEPER, free_port, processes_mentioning, running
from test_faults import ROOT, Cluster, as_postgres, pg_binary
from test_server import MlflowServer

from sweeper.records import member_study_name
from sweeper.stores import tracking
from sweeper.stores.storage import make_storage

BIN = Path(sys.executable).parent
TINY = ["--epochs", "2", "--train-size", "500", "--no-progress"]
FAST_RETRY = {"SWEEPER_HEARTBEAT_S": "2", "SWEEPER_GRACE_S": "6"}
STUDY = "quickstart"


def postgres(root: Path) -> Cluster:
    """A throwaway PostgreSQL cluster under `root`, started, with a database for MLflow."""
    for path in (root / "sock", root / "data"):
        path.mkdir(parents=True)
    (root / "server.log").touch()
    if ROOT:
        for path in (root, root / "sock", root / "data", root / "server.log"):
            shutil.chown(path, "postgres", "postgres")
    cluster = Cluster(root, free_port())
    subprocess.run(as_postgres([pg_binary("initdb"), "-D", str(cluster.data), "-A", "trust",
                                "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    cluster.start()
    engine = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE DATABASE mlflow"))
        connection.execute(sa.text("CREATE DATABASE optuna"))
    engine.dispose()
    return cluster


def database(cluster: Cluster, name: str) -> str:
    return f"{cluster.url.rsplit('/', 1)[0]}/{name}"


def note(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def ray_cluster(temp: Path) -> str:
    """A Ray head and a second node on 127.0.0.1, one CPU each; the head's GCS address."""
    port = free_port()
    common = ["--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(80 * 2**20),
              "--disable-usage-stats",
              "--node-ip-address", "127.0.0.1"]  # fmt: skip
    head = ["--head", "--port", str(port), "--temp-dir", str(temp), "--include-dashboard=false"]
    address = f"127.0.0.1:{port}"
    for node in (head, ["--address", address]):
        done = subprocess.run([BIN / "ray", "start", *node, *common], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"ray start {node}: {done.stdout}{done.stderr}"
    return address


def launch(out: Path, name: str, *args: str) -> subprocess.Popen:
    """A `sweeper launch` whose output goes to OUT/NAME.out and .err."""
    with open(out / f"{name}.out", "w") as stdout, open(out / f"{name}.err", "w") as stderr:
        return subprocess.Popen([SWEEPER, "launch", QUICKSTART, *args], stdout=stdout,
                                stderr=stderr, env={**os.environ, **FAST_RETRY})  # fmt: skip


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=STUDY, storage=make_storage(url)).get_trials()
    except KeyError:  # not created yet
        return []


def wait_until(what: str, check, process: subprocess.Popen, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if process.poll() is not None:
            raise AssertionError(f"the launch ended ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout} s")
        time.sleep(0.3)
    return found


def kill_a_worker_mid_trial(url: str, checkpoints: Path, process: subprocess.Popen) -> int:
    """SIGKILL the worker of a running trial that has its first epoch checkpointed; its number."""

    def past_first_epoch():
        return [t for t in trials(url) if t.state.name == "RUNNING" and "worker" in t.user_attrs
                and (checkpoints / f"trial-{t.number}-last.pt").exists()]  # fmt: skip

    trial = wait_until("trial past its first epoch", past_first_epoch, process)[0]
    name = trial.user_attrs["worker"]
    (pid,) = [p for p in processes_mentioning(f"--worker-name {name} ") if running(p)]
    os.kill(pid, signal.SIGKILL)
    return trial.number


def sweep_facts(url: str, tracking_uri: str) -> dict:
    """What the stores hold after the first launch."""
    stored = trials(url)
    finished = [t for t in stored if t.state.name in ("COMPLETE", "PRUNED")
                and not t.user_attrs.get("surplus")]  # fmt: skip
    runs = tracking.runs_of_study(tracking_uri, STUDY)
    trial_runs = runs[runs["tags.sweeper.trial"].notna()]
    return {
        "states": {t.number: t.state.name for t in stored},
        "finished": len(finished),
        "distinct_configs": len({json.dumps(t.params, sort_keys=True) for t in finished}),
        # the nodes trials trained on: the killed worker's trial counts, as its node's new
        # worker may start after the other node took the trials that were left
        "nodes": sorted({t.user_attrs["node"] for t in stored if t.user_attrs.get("node")}),
        "retries": {
            t.number: t.system_attrs.get("failed_trial")
            for t in stored
            if t.system_attrs.get("failed_trial") is not None
        },  # fmt: skip
        "resumed_from_epoch": {
            t.number: t.user_attrs.get("resumed_from_epoch")
            for t in stored
            if "resumed_from_epoch" in t.user_attrs
        },  # fmt: skip
        "finished_runs": sorted(
            trial_runs[trial_runs["status"] == "FINISHED"]["tags.sweeper.trial"].astype(int)
        ),  # fmt: skip
        "finished_trial_numbers": sorted(t.number for t in finished),
    }


def left_behind() -> dict:
    """Ray actors of sweeper (ray::Slot) and `sweeper worker` processes still alive."""
    return {
        "actors": [p for p in processes_mentioning("ray::Slot") if running(p)],
        "workers": [p for p in processes_mentioning("sweeper.cli worker") if running(p)],
    }


def scenario(out: Path, root: Path) -> dict:
    cluster = postgres(root / "pg")
    url = database(cluster, "optuna")
    server = MlflowServer(database(cluster, "mlflow"), root / "artifacts",
                          out / "mlflow.log")  # fmt: skip
    note("postgres up")
    server.start()
    note("mlflow server up")
    address = ray_cluster(root / "ray")
    note("ray up")
    sweep = root / "sweep"
    stores = ["--storage", url, "--tracking-uri", server.url, "--dir", str(sweep)]
    started = time.monotonic()
    first = launch(out, "first", "--ray", address, *stores, "--trials", "6", *TINY)  # +ensemble
    killed = kill_a_worker_mid_trial(url, sweep / "checkpoints" / STUDY, first)
    note(f"killed the worker of trial {killed}")
    code = first.wait(timeout=300)
    note("first launch done")
    facts = {"first_code": code, "killed_trial": killed, "sweep_s": time.monotonic() - started,
             **sweep_facts(url, server.url)}  # fmt: skip
    facts["ensemble_line"] = [ln for ln in (out / "first.out").read_text().splitlines()
                              if "ensemble of" in ln]  # fmt: skip
    err = (out / "first.err").read_text()
    said = re.findall(r"^\[node (\w+)\] sweeper: worker \S+ runs on", err, re.MULTILINE)
    facts["worker_lines_from"] = sorted(set(said))  # every node's worker output reached it
    members = optuna.load_study(study_name=member_study_name(STUDY), storage=make_storage(url))
    done = [t for t in members.get_trials() if t.state.name == "COMPLETE"]
    facts["members"] = len(done)
    trained = [t.user_attrs["node"] for t in done if "node" in t.user_attrs]  # not kept ones
    facts["member_nodes"] = {node: trained.count(node) for node in trained}
    more = [*stores, "--trials", "12", *TINY, "--no-ensemble"]
    second = launch(out, "second", "--ray", address, *more)
    wait_until("a trial running", lambda: [t for t in trials(url) if t.state.name == "RUNNING"
                                           and t.number >= 6], second)  # fmt: skip
    time.sleep(3)  # into its first epoch
    second.send_signal(signal.SIGINT)
    note("SIGINT sent")
    facts["second_code"] = second.wait(timeout=120)
    deadline = time.monotonic() + 30  # a killed actor's process takes a moment to exit
    while any(left := left_behind()) and time.monotonic() < deadline:
        time.sleep(0.5)
    facts["left_behind"] = left
    facts["running_after_sigint"] = [t.number for t in trials(url) if t.state.name == "RUNNING"]
    return facts


def bench(out: Path, root: Path) -> dict:
    """The same 6-trial sweep with --ray (two one-CPU nodes) and with 2 local workers."""
    cluster = postgres(root / "pg")
    server = MlflowServer(database(cluster, "mlflow"), root / "artifacts",
                          out / "mlflow.log")  # fmt: skip
    server.start()
    address = ray_cluster(root / "ray")
    times = {}
    tiny = [*TINY, "--no-ensemble"]
    for name, pool in (("ray", ["--ray", address]), ("local", ["--workers", "2"])):
        engine = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        engine.dispose()
        stores = ["--storage", database(cluster, name),
                  "--tracking-uri", server.url, "--dir", str(root / name)]  # fmt: skip
        started = time.monotonic()
        process = launch(out, name, *pool, *stores, "--trials", "6", *tiny)
        code = process.wait(timeout=600)
        assert code == 0, (out / f"{name}.err").read_text()[-3000:]
        times[f"{name}_s"] = round(time.monotonic() - started, 1)
    times["ratio"] = round(times["ray_s"] / times["local_s"], 2)
    return times


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths
    os.chmod(root, 0o755)  # the postgres user walks through it
    try:
        facts = bench(out, root) if "--bench" in sys.argv else scenario(out, root)
        print(json.dumps(facts))
    finally:  # everything else dies with this process's pid namespace
        pg = root / "pg" / "data"
        if (pg / "postmaster.pid").exists():
            stop = [pg_binary("pg_ctl"), "-D", str(pg), "-m", "immediate", "-w", "stop"]
            subprocess.run(as_postgres(stop), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
