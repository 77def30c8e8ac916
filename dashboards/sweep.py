"""Sweep health: how the search went, where the time went, and what the ensemble gained.

sweeper report quickstart --dashboard sweep
"""

import optuna.visualization as vis
import plotly.express as px

from sweeper import StudyData

title = "Sweep"


def history(data: StudyData):
    """Optimization history"""
    return vis.plot_optimization_history(data.study, target=data.target, target_name=data.metric)


def importances(data: StudyData):
    """Parameter importances"""
    if data.count("COMPLETE") < 2:
        return "Needs two complete trials or more."
    return vis.plot_param_importances(data.study, target=data.target, target_name=data.metric)


def parallel(data: StudyData):
    """Parallel coordinates of the complete trials"""
    return vis.plot_parallel_coordinate(data.study, target=data.target, target_name=data.metric)


def intermediate(data: StudyData):
    """Intermediate values of pruned, finished and running trials"""
    if data.target is not None:
        return "A study of several objectives reports no intermediate values (see the curves)."
    return vis.plot_intermediate_values(data.study)


def workers(data: StudyData):
    """Trials per worker over time"""
    frame = data.settings.dropna(subset=["start"]).copy()
    if frame.empty:
        return "No trial has started yet."
    frame["end"] = frame["end"].fillna(data.collected)  # running trials: until now
    figure = px.timeline(frame, x_start="start", x_end="end", y="worker", color="state",
                         hover_data=["trial", "setting", "val_acc"])  # fmt: skip
    figure.update_yaxes(categoryorder="category ascending")
    figure.update_traces(marker_line_color="white", marker_line_width=1)
    return figure


def spent(data: StudyData):
    """Time and GPU-hours spent"""
    frame = data.settings.dropna(subset=["start"]).copy()
    if frame.empty:
        return "No trial has started yet."
    frame["hours"] = (frame["end"].fillna(data.collected) - frame["start"]).dt.total_seconds()
    frame["hours"] /= 3600
    frame["gpu_hours"] = frame["hours"].where(frame["gpu"] == "yes", 0.0)
    frame["train_hours"] = frame["train_minutes"] / 60
    table = (
        frame.groupby(["worker", "device"], dropna=False)
        .agg(
            trials=("trial", "count"),
            complete=("state", lambda s: (s == "COMPLETE").sum()),
            hours=("hours", "sum"),
            train_hours=("train_hours", "sum"),
            gpu_hours=("gpu_hours", "sum"),
        )  # fmt: skip
        .reset_index()
    )
    span = (frame["end"].fillna(data.collected).max() - frame["start"].min()).total_seconds()
    note = (
        f"Wall time from the first trial's start to the last one's end: {span / 3600:.2f} hours; "
        f"trial-hours {table['hours'].sum():.2f}, of them on a GPU {table['gpu_hours'].sum():.2f}"
        " (trials packed on one GPU each count)."
    )
    return [note, table]


def ensemble(data: StudyData):
    """The seed ensemble against its members (test accuracy)"""
    if data.members is None or data.members.empty:
        return "No ensemble run yet: `sweeper ensemble STUDY`, or a launch without --no-ensemble."
    figure = px.bar(data.members, x="name", y="test_acc", color="group", text_auto=".4f",
                    hover_data=["val_acc", "members"])  # fmt: skip
    low = data.members["test_acc"].min()
    figure.update_yaxes(
        range=[max(0.0, low - 0.05), min(1.0, data.members["test_acc"].max() + 0.02)]
    )
    return [figure, data.members]


sections = [history, importances, parallel, intermediate, workers, spent, ensemble]
