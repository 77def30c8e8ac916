"""spec.warmstart: a new study trains first the best configs of an earlier study and the rows of a
CSV file, as far as they fit its space. A real SQLite storage; no training."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.records import Attr
from sweeper.spec.study import Study
from sweeper.spec.warmstart import enqueue_warm_start, misfit, search_space
from sweeper.stores.storage import make_storage


def space(trial: optuna.Trial) -> dict:
    return {
        "model": trial.suggest_categorical("model", ["cnn2", "lenet5"]),
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
    }


def earlier(url: str) -> None:
    """An earlier study 'old' with 4 complete trials (lr 0.01..0.04, the best last) and one
    whose model the new space does not have."""
    study = optuna.create_study(study_name="old", storage=make_storage(url), direction="maximize")
    model = CategoricalDistribution(["cnn2", "lenet5", "vgg11"])
    lr = FloatDistribution(1e-4, 1.0, log=True)
    for i, (name, rate) in enumerate([("cnn2", 0.01), ("lenet5", 0.02), ("cnn2", 0.03),
                                      ("vgg11", 0.04)]):  # fmt: skip
        study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5 + i / 10,
                                     params={"model": name, "lr": rate},
                                     distributions={"model": model, "lr": lr}))  # fmt: skip


def test_the_best_configs_of_an_earlier_study_and_a_csv_are_queued_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier(url)
    (tmp_path / "configs.csv").write_text("params.model,lr,extra\nlenet5,0.5,1\ncnn2,0.001,\n")
    spec = Study(name="new", space=space, warm_start=["old", "configs.csv"], warm_top=3,
                 file=str(tmp_path / "new.py"))  # fmt: skip
    storage = make_storage(url)
    new = optuna.create_study(study_name="new", storage=storage, direction="maximize")
    lines = enqueue_warm_start(spec, new, storage, url)
    assert lines[0] == "warm start: 5 configs from old, configs.csv queued first"
    assert any(line.startswith("warm start: model left out") and "old trial 3" in line
               for line in lines)  # fmt: skip
    assert any("lr left out" in line and "configs.csv row 1" in line for line in lines)
    assert any("extra left out" in line for line in lines)
    queued = new.get_trials(states=(TrialState.WAITING,))
    froms = [t.user_attrs[Attr.WARM_START] for t in queued]
    assert froms == ["old trial 3", "old trial 2", "old trial 1", "configs.csv row 1",
                     "configs.csv row 2"]  # fmt: skip
    assert queued[0].system_attrs["fixed_params"] == {"lr": 0.04}  # vgg11 left out
    assert queued[4].system_attrs["fixed_params"] == {"model": "cnn2", "lr": 0.001}
    assert enqueue_warm_start(spec, new, storage, url) == []  # a study with trials: nothing more


def test_a_space_is_read_from_draws_and_values_are_checked_against_it() -> None:
    found = search_space(Study(name="s", space=space))
    assert set(found) == {"model", "lr"}
    assert misfit("lr", 0.01, found) is None
    assert "outside the new space" in misfit("lr", 2.0, found)
    assert "outside the new space" in misfit("model", "vgg11", found)
    assert "not a parameter of the new space" in misfit("momentum", 0.9, found)
