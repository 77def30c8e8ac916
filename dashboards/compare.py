"""Studies side by side: their best results, the learning curves of their best trials, what
mattered in each, and how fast each search found its best. The default for several studies.

sweeper report quickstart other
"""

import optuna.visualization as vis
import pandas as pd
import plotly.express as px
from optuna.importance import FanovaImportanceEvaluator, get_param_importances

from sweeper import StudyData

title = "Compare"
studies = "several"  # the sections take a list of StudyData

SETTINGS = ["model", "optimizer", "lr", "batch_size", "activation", "weight_decay", "lr_decay",
            "other"]  # fmt: skip


def _note(studies: list[StudyData]) -> list[str]:
    """A sentence if the studies do not optimize the same metric (said once, over the table)."""
    metrics = {data.metric for data in studies}
    if len(metrics) == 1:
        return []
    which = ", ".join(f"{data.name} {data.metric}" for data in studies)
    return [f"The studies optimize different metrics ({which}); their values are shown as they "
            "are, so higher is better for val_acc and lower for val_loss."]  # fmt: skip


def table(studies: list[StudyData]):
    """Best results, one row per study"""
    rows = []
    for data in studies:
        best = data.best()
        ensemble = data.ensemble if data.ensemble is not None else {}
        rows.append({
            "study": data.name,
            "metric": data.metric,
            "complete": data.count("COMPLETE"),
            "pruned": data.count("PRUNED"),
            "failed": data.count("FAIL"),
            "running": data.count("RUNNING"),
            "best_value": None if best is None else best.value,
            "best_trial": None if best is None else best.trial,
            **{key: None if best is None else best[key] for key in SETTINGS},
            "train_minutes": data.settings["train_minutes"].sum(),
            "ensemble_test_acc": ensemble.get("metrics.ensemble_test_acc"),
            "mlflow_run": "" if best is None else best.mlflow_run,
        })  # fmt: skip
    frame = pd.DataFrame(rows).astype({"best_trial": "Int64", "batch_size": "Int64"})
    return [*_note(studies), frame]


def curves(studies: list[StudyData]):
    """Learning curves of each study's best trial"""
    lines, missing = [], []
    for data in studies:
        best = data.best()
        if best is None:
            missing.append(data.name)
            continue
        run = data.curves[data.curves["trial"] == best.trial]
        for split in ("val", "train"):
            metric = data.metric.replace("val", split)
            lines.append(run[["epoch"]].assign(
                study=f"{data.name} (#{best.trial})", split=split, metric=metric, value=run[metric]
            ))  # fmt: skip
    said = [f"No complete trial yet in {', '.join(missing)}."] if missing else []
    if not lines:
        return said
    frame = pd.concat(lines, ignore_index=True).dropna(subset=["value"])
    figure = px.line(frame, x="epoch", y="value", color="study", line_dash="split", markers=True,
                     hover_data=["metric"], title="validation: solid; train: dashed")  # fmt: skip
    figure.update_xaxes(dtick=1)
    figure.update_yaxes(title=" / ".join(sorted({data.metric for data in studies})))
    return [*said, figure]


def importances(studies: list[StudyData]):
    """Parameter importances per study"""
    found, said = [], []
    for data in studies:
        if data.count("COMPLETE") < 2:
            said.append(f"{data.name}: needs two complete trials or more.")
            continue
        evaluator = FanovaImportanceEvaluator(seed=0)  # the same report twice: the same bars
        scores = get_param_importances(data.study, evaluator=evaluator, target=data.target)
        if not scores:
            said.append(f"{data.name}: no parameter was searched in every complete trial.")
        found += [{"study": data.name, "parameter": k, "importance": v} for k, v in scores.items()]
    if not found:
        return said
    figure = px.bar(pd.DataFrame(found), x="parameter", y="importance", color="study",
                    barmode="group", text_auto=".2f")  # fmt: skip
    return [*said, figure]


def history(studies: list[StudyData]):
    """Optimization histories (best value so far against trial number)"""
    metrics = " / ".join(sorted({data.metric for data in studies}))
    target = next((d.target for d in studies if d.target is not None), None)  # several objectives
    return vis.plot_optimization_history([d.study for d in studies], target=target,
                                         target_name=metrics)  # fmt: skip


sections = [table, curves, importances, history]
