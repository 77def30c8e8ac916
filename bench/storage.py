"""Optuna storage under concurrent workers: SQLite file vs PostgreSQL, 1 to 8 worker processes.

    .venv/bin/python bench/storage.py [--seconds 10] [--workers 1 2 4 8]
                                      [--backends sqlite postgresql] [--markdown FILE]

Storages come from sweeper's make_storage, as sweeper's workers use them. SQLite: a file in
a temporary directory (120 s busy timeout). PostgreSQL: a fresh database sweeper_bench_<random>,
dropped at the end, on the server of $SWEEPER_BENCH_PG_URL (default
postgresql+psycopg2://postgres@127.0.0.1:5432/postgres, an admin URL).

For each backend and worker count N a new study is created (RandomSampler, so the sampler costs
almost nothing); N processes of a spawn pool, started and imported beforehand, wait at a
barrier, then each loops for --seconds: ask, suggest 5 params, report() 3 steps (one per
epoch), tell. Latency: ask through tell of one trial; throughput: all trials over the longest
worker's time; report() is also timed alone. Errors (e.g. "database is locked") are counted and
shown, not raised. Not included: the heartbeat thread and fail_stale_trials that
Study.optimize adds, and any training.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import random
import secrets
import statistics
import time
import warnings
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

import optuna
import sqlalchemy

PG_URL = os.environ.get(
    "SWEEPER_BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
NAN = float("nan")


def _init() -> None:
    import sweeper.stores.storage  # noqa: F401  (imported once per pool process, not per timing)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Heartbeat of storage")  # ask/tell, not optimize


def _ready(barrier) -> None:
    barrier.wait()  # returns once every pool process has imported: none imports while timed


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:70]}"


def _ratio(a: float, b: float) -> float:
    return a / b if b else NAN


def worker(url: str, study_name: str, seed: int, seconds: float, barrier) -> dict:
    """Run trials for `seconds` after the barrier; return latencies, report() times, errors."""
    from sweeper.stores.storage import make_storage

    out = {"latency": [], "report": [], "errors": Counter(), "elapsed": 0.0}
    try:
        storage = make_storage(url)
        sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except Exception as exc:
        barrier.abort()
        out["errors"][f"setup: {_error(exc)}"] += 1
        return out
    rng = random.Random(seed)
    try:
        barrier.wait()
    except Exception as exc:
        out["errors"][f"barrier: {_error(exc)}"] += 1
        seconds = 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        trial, t0 = None, time.perf_counter()
        try:
            trial = study.ask()
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            trial.suggest_float("momentum", 0.5, 0.99)
            trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
            trial.suggest_categorical("batch_size", [32, 64, 128, 256])
            trial.suggest_float("dropout", 0.0, 0.5)
            for step in range(3):
                r0 = time.perf_counter()
                trial.report(rng.random(), step)
                out["report"].append(time.perf_counter() - r0)
            study.tell(trial, rng.random())
            out["latency"].append(time.perf_counter() - t0)
        except Exception as exc:
            out["errors"][_error(exc)] += 1
            if trial is not None:
                with contextlib.suppress(Exception):
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
        out["elapsed"] = time.perf_counter() - start
    storage.engine.dispose()
    return out


def measure(pool, manager, url: str, n: int, seconds: float) -> dict:
    """A new study, n workers started together: throughput, latency percentiles, errors."""
    from sweeper.stores.storage import make_storage

    storage = make_storage(url)
    optuna.create_study(study_name=f"bench_{n}", storage=storage, direction="maximize")
    storage.engine.dispose()
    barrier = manager.Barrier(n, timeout=120)
    args = [(url, f"bench_{n}", seed, seconds, barrier) for seed in range(n)]
    results = pool.starmap(worker, args, chunksize=1)  # one task per process, all at once
    lat = sorted(x * 1e3 for r in results for x in r["latency"])
    reports = [x * 1e3 for r in results for x in r["report"]]
    return {
        "trials": len(lat),
        "throughput": _ratio(len(lat), max(r["elapsed"] for r in results)),
        "median": statistics.median(lat) if lat else NAN,
        "p95": statistics.quantiles(lat, n=100)[94] if len(lat) > 1 else NAN,
        "report": statistics.fmean(reports) if reports else NAN,
        "errors": sum((r["errors"] for r in results), Counter()),
    }


def pg_admin(sql: str, **params: str) -> None:
    engine = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(sql), params)
    finally:
        engine.dispose()


def run_backend(pool, manager, backend: str, counts: list[int], seconds: float) -> dict:
    results: dict[int, dict] = {}
    db = f"sweeper_bench_{secrets.token_hex(4)}"
    with TemporaryDirectory(prefix="sweeper-bench-") as tmp:
        try:
            url = f"sqlite:///{tmp}/optuna.db"
            if backend == "postgresql":
                pg_admin(f'CREATE DATABASE "{db}"')
                url = sqlalchemy.make_url(PG_URL).set(database=db)
                url = url.render_as_string(hide_password=False)
            for n in counts:
                print(f"{NAMES[backend]}, {n} worker(s) ...", flush=True)
                try:
                    results[n] = measure(pool, manager, url, n, seconds)
                except Exception as exc:
                    results[n] = {"errors": Counter([_error(exc)])}
        except Exception as exc:  # e.g. no PostgreSQL server
            results = {n: {"errors": Counter([_error(exc)])} for n in counts}
        finally:
            if backend == "postgresql":
                try:  # end the sessions left (a worker killed on error), then drop
                    pg_admin(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()",
                        db=db,
                    )
                    pg_admin(f'DROP DATABASE IF EXISTS "{db}"')
                except Exception as exc:
                    print(f"warning: database {db} not dropped: {_error(exc)}")
    return results


def table(all_results: dict[str, dict[int, dict]], counts: list[int], seconds: float, load) -> str:
    lines = [
        f"Optuna {optuna.__version__}, RandomSampler, {seconds:g} s per run, {os.cpu_count()} "
        "CPUs; one trial = ask + 5 suggest + 3 report() + tell; ms per trial / per report().",
        f"1-min load average before / after: {load:.2f} / {os.getloadavg()[0]:.2f} (other "
        "processes on these cores skew the numbers).",
        "",
        f"| backend | workers | trials | trials/s | vs {counts[0]} worker(s) | median ms | p95 ms "
        "| report() ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for backend, results in all_results.items():
        base = results[counts[0]].get("throughput", NAN)
        for n, r in results.items():
            errors = "; ".join(f"{k} x{v}" for k, v in r["errors"].items()) or "0"
            lines.append(
                f"| {NAMES[backend]} | {n} | {r.get('trials', 0)} | {r.get('throughput', NAN):.1f} "
                f"| {_ratio(r.get('throughput', NAN), base):.2f} | {r.get('median', NAN):.1f} "
                f"| {r.get('p95', NAN):.1f} | {r.get('report', NAN):.2f} | {errors} |"
            )
    if len(all_results) == 2:
        lines += ["", "| workers | PostgreSQL / SQLite trials/s |", "|---:|---:|"]
        for n in counts:
            pg, sq = (all_results[b][n].get("throughput", NAN) for b in ("postgresql", "sqlite"))
            lines.append(f"| {n} | {_ratio(pg, sq):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per backend and N")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--backends", nargs="+", choices=list(NAMES), default=list(NAMES))
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts, ctx = sorted(set(args.workers)), multiprocessing.get_context("spawn")
    with ctx.Manager() as manager, ctx.Pool(max(counts), initializer=_init) as pool:
        pool.map(_ready, [manager.Barrier(max(counts))] * max(counts), chunksize=1)
        results = {b: run_backend(pool, manager, b, counts, args.seconds) for b in args.backends}
    text = table(results, counts, args.seconds, load)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
