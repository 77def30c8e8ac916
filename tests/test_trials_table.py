"""What `sweeper status` and the launch's end print: the trials table of sweep.progress, from an
in-memory Optuna study. No stores, no training."""

from __future__ import annotations

import json

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweeper.records import RETRY_OF_SYSTEM_ATTR, Attr
from sweeper.sweep.progress import status_text, trials_table


def swept() -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    lr = {"lr": FloatDistribution(1e-4, 1.0)}
    rows = [(TrialState.COMPLETE, 0.6, {Attr.BEST_EPOCH: 3, Attr.EPOCHS_RUN: 4}),
            (TrialState.PRUNED, None, {Attr.EPOCHS_RUN: 1}),
            (TrialState.COMPLETE, 0.7, {Attr.BEST_EPOCH: 2, Attr.EPOCHS_RUN: 2,
                                        Attr.WORKER: "w1", Attr.MLFLOW_RUN_ID: "abc"}),
            (TrialState.FAIL, None, {Attr.FAIL_REASON: "diverged"}),
            (TrialState.FAIL, None, {Attr.SURPLUS: True})]  # fmt: skip
    for i, (state, value, attrs) in enumerate(rows):
        trial = create_trial(state=state, value=value, params={"lr": 0.01 * (i + 1)},
                             distributions=lr, user_attrs=attrs,
                             system_attrs={RETRY_OF_SYSTEM_ATTR: 0} if i == 1 else {})  # fmt: skip
        study.add_trial(trial)
    return study


def test_one_row_a_counted_trial_best_first() -> None:
    table = trials_table(swept())
    assert list(table["trial"]) == [2, 0, 1, 3]  # the surplus claim is left out
    assert list(table.columns[:5]) == ["trial", "state", "value", "best_epoch", "epochs_run"]
    assert table.loc[0, "worker"] == "w1" and table.loc[0, "mlflow_run_id"] == "abc"
    assert str(table["best_epoch"].dtype) == "Int64" and table.loc[2, "retry_of"] == 0
    assert table.loc[3, "fail_reason"] == "diverged"
    assert table.loc[0, "params.lr"] == 0.03


def test_status_as_json_csv_and_text() -> None:
    study = swept()
    rows = json.loads(status_text(study, "json"))
    assert [row["trial"] for row in rows] == [2, 0, 1, 3]
    assert status_text(study, "csv").splitlines()[0].startswith("trial,state,value,best_epoch")
    assert "COMPLETE" in status_text(study, "text")
    assert status_text(optuna.create_study(), "text") == "no trials yet"


def test_several_objectives_show_each_cost_as_a_column() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_acc", "params"])
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.6, 1e4]))
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[0.7, 2e5]))
    table = trials_table(study)
    assert list(table["value"]) == [0.7, 0.6] and list(table["params"]) == [2e5, 1e4]
