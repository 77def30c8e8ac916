"""The evaluation report of the source documents: one row per setting, a validation-accuracy
plot per setting, and a short summary.

sweeper report quickstart --dashboard evaluation
"""

import textwrap

import optuna.visualization as vis
import plotly.express as px

from sweeper import StudyData

title = "Evaluation"

# The documents' columns (model, GPU yes/no, batch size, activation, init, optimizer, learning
# rate, momentum, weight decay, LR decay, training time in minutes, early-stopping epoch,
# accuracy), with each trial's MLflow run link, its state and what else tells rows apart.
COLUMNS = ["trial", "mlflow_run", "state", "model", "gpu", "batch_size", "activation", "init",
           "optimizer", "lr", "momentum", "weight_decay", "lr_decay", "train_minutes",
           "best_epoch", "epochs_run", "val_acc", "other", "status", "fail_reason"]  # fmt: skip


SHOWN_CURVES = 24  # settings drawn, best first


def summary(data: StudyData) -> str:
    """Summary"""
    counts = ", ".join(
        f"{data.count(state)} {state.lower()}"
        for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        if data.count(state)
    )
    minutes = data.settings["train_minutes"].sum()
    lines = [
        f"Study {data.name}: {len(data.trials)} trial(s) ({counts or 'none yet'}); "
        f"{minutes:.1f} minutes of training in all."
    ]
    if data.running:
        lines.append(
            f"The study is still running (trials running now: {data.count('RUNNING')}); "
            f"this report shows it as of {data.collected:%Y-%m-%d %H:%M:%S}."
        )
    best = data.best()
    if best is not None:
        lines.append(
            f"Best setting: trial {best.trial}, {best.model} with {best.optimizer} "
            f"(lr {best.lr:.3g}, batch {best.batch_size}, {best.activation}, {best.init} "
            f"init, LR decay {best.lr_decay}): validation accuracy {best.val_acc:.4f} at epoch "
            f"{best.best_epoch} of {best.epochs_run}, after {best.train_minutes:.1f} minutes."
        )
    if data.ensemble is not None:
        m = data.ensemble  # a row: status, run_id, metrics.<key>, ...
        lines.append(
            f"Seed ensemble of {int(m.get('metrics.members', 0))} retrained members: test "
            f"accuracy {m.get('metrics.ensemble_test_acc', float('nan')):.4f} against "
            f"{m.get('metrics.best_member_test_acc', float('nan')):.4f} for its best member "
            f"({m.get('metrics.gain_over_best_member', float('nan')):+.4f})."
        )
    return "\n\n".join(lines)


def table(data: StudyData):
    """One row per setting, best first"""
    return best_first(data)[COLUMNS]


def best_first(data: StudyData):
    return data.settings.sort_values(
        ["value", "trial"], ascending=[not data.maximize, True], na_position="last"
    )


def curves(data: StudyData):
    """Validation accuracy per epoch, one plot per setting"""
    frame = data.curves.dropna(subset=["val_acc"])
    if frame.empty:
        return "No epoch has finished yet."
    ranked = best_first(data)["setting"].tolist()
    note = []
    if len(ranked) > SHOWN_CURVES:  # thousands of plots would not open; the CSV has every row
        frame = frame[frame["setting"].isin(ranked[:SHOWN_CURVES])]
        note = [f"The best {SHOWN_CURVES} of {len(ranked)} settings (the table has them all)."]
        if frame.empty:  # a dashboard reading the curves of other trials than the best
            return note[0] + " None of them has a curve yet."
    settings = frame["setting"].nunique()
    rows = -(-settings // 3)
    together = px.line(frame, x="epoch", y="val_acc", color="setting", markers=True,
                       title="All settings")  # fmt: skip
    # a setting's label wrapped over up to 3 short lines: titles of neighbours must not meet
    apart = px.line(frame, x="epoch", y="val_acc", facet_col="setting", facet_col_wrap=3,
                    markers=True, facet_row_spacing=0.45 / rows, facet_col_spacing=0.06,
                    height=160 + 300 * rows, title="Per setting")  # fmt: skip
    apart.for_each_annotation(lambda a: a.update(
        text="<br>".join(textwrap.wrap(a.text.split("=", 1)[-1], 40, max_lines=3)),
        font_size=11))  # fmt: skip
    apart.update_yaxes(range=[0, 1])
    for figure in (together, apart):
        figure.update_xaxes(dtick=1)
    return [*note, together, apart]


def pareto(data: StudyData):
    """Accuracy against cost: the Pareto front"""
    if data.target is None:
        return None  # one objective: no front, no section
    front = {t.number for t in data.study.best_trials}
    figure = vis.plot_pareto_front(data.study)
    rows = data.settings[data.settings["trial"].isin(front)]
    costs = data.study.metric_names[1:]
    values = {t.number: t.values for t in data.trials if t.number in front}
    table = rows[["trial", "setting", "value", "mlflow_run"]].copy()
    for i, name in enumerate(costs, start=1):
        table.insert(3, name, table["trial"].map(lambda n, i=i: values[n][i]))
    note = (f"{len(front)} trials on the front: none of them is beaten on every objective by"
            " another trial. Their MLflow runs are linked in the table.")  # fmt: skip
    return [note, figure, table.sort_values("value", ascending=not data.maximize)]


sections = [summary, table, pareto, curves]
