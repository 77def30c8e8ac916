"""The sampler's time per suggestion in a long study (issue 24): Optuna's TPE, its options, and
sweeper's `tpe` (TPE learning from at most `history` finished trials, sweeper/spec/history.py).

    .venv/bin/python bench/sampler.py [--trials 1000 10000] [--suggest 40]

For each study size, a study holding that many finished trials (4 parameters: two log floats,
a float, a categorical; random values) suggests `--suggest` more, and the mean time of a whole
trial's suggestions is printed for each sampler, with the ratio to Optuna's TPE as it comes.
The storage is in memory: a database adds the same reads to each.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import optuna

from sweeper.spec.history import DEFAULT_LIMIT, BoundedHistory

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {
    "lr": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
    "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-3, log=True),
    "dropout": optuna.distributions.FloatDistribution(0, 0.5),
    "model": optuna.distributions.CategoricalDistribution(["vgg11", "resnet18", "cnn2"]),
}
SAMPLERS = {
    "TPE (Optuna's default)": lambda: optuna.samplers.TPESampler(seed=0),
    "TPE multivariate=True": lambda: optuna.samplers.TPESampler(seed=0, multivariate=True),
    "TPE n_ei_candidates=8": lambda: optuna.samplers.TPESampler(seed=0, n_ei_candidates=8),
    "TPE constant_liar=True": lambda: optuna.samplers.TPESampler(seed=0, constant_liar=True),
    f"sweeper's tpe (history={DEFAULT_LIMIT})": lambda: BoundedHistory(
        optuna.samplers.TPESampler(seed=0), DEFAULT_LIMIT
    ),
}


def finished_trials(count: int) -> list[optuna.trial.FrozenTrial]:
    rng = np.random.default_rng(0)
    trials = []
    for i in range(count):
        params = {
            "lr": float(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1)))),
            "weight_decay": float(np.exp(rng.uniform(np.log(1e-6), np.log(1e-3)))),
            "dropout": float(rng.uniform(0, 0.5)),
            "model": ["vgg11", "resnet18", "cnn2"][i % 3],
        }
        trials.append(optuna.trial.create_trial(params=params, distributions=SPACE,
                                                value=float(rng.random())))  # fmt: skip
    return trials


def suggest(trial: optuna.Trial) -> float:
    trial.suggest_float("lr", 1e-3, 1e-1, log=True)
    trial.suggest_float("weight_decay", 1e-6, 1e-3, log=True)
    trial.suggest_float("dropout", 0, 0.5)
    trial.suggest_categorical("model", ["vgg11", "resnet18", "cnn2"])
    return 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--suggest", type=int, default=40)
    args = parser.parse_args()
    print("| finished trials | sampler | ms a trial (4 suggestions) | against TPE |")
    print("|---|---|---|---|")
    for count in args.trials:
        trials = finished_trials(count)
        baseline = None
        for name, make in SAMPLERS.items():
            study = optuna.create_study(direction="maximize", sampler=make())
            study.add_trials(trials)
            started = time.perf_counter()
            study.optimize(suggest, n_trials=args.suggest)
            ms = (time.perf_counter() - started) / args.suggest * 1000
            baseline = baseline or ms
            print(f"| {count} | {name} | {ms:.0f} | {ms / baseline:.2f} |", flush=True)


if __name__ == "__main__":
    main()
