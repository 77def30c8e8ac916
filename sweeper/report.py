"""`sweeper report` and `sweeper dashboard`: a study's trials and runs as one offline HTML page.

A dashboard file (dashboards/evaluation.py, dashboards/sweep.py) is plain Python that defines

    title = "Evaluation"                  # optional; the file name otherwise
    sections = [summary, table, curves]   # functions of one StudyData

Each section returns a plotly Figure, a pandas DataFrame (a table), a str (a paragraph) or a list
of those; the first line of its docstring is its heading. The report's first table is also
written as CSV, and both files are logged to the study's latest launch run in MLflow.
"""

from __future__ import annotations

import argparse
import html
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.errors import SweeperError
from sweeper.userfile import import_file, line_in, one_line

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from mlflow.entities import Run

    from sweeper.pool import Sweep

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"
CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "seconds")
MOMENTUM_OPTIMIZERS = ("sgd", "rmsprop")  # the others ignore the momentum setting
SETTINGS = ("trial", "state", "setting", "model", "gpu", "device", "batch_size", "activation",
            "init", "optimizer", "lr", "momentum", "weight_decay", "lr_decay", "train_minutes",
            "best_epoch", "epochs_run", "val_acc", "value", "other", "status", "fail_reason",
            "retry_of", "worker", "start", "end", "mlflow_run", "run_id")  # fmt: skip
SHOWN = {"model", "batch_size", "activation", "init", "optimizer", "lr", "momentum",
         "weight_decay", "schedule", "milestones", "gamma", "device"}  # fmt: skip


@dataclass
class StudyData:
    """Everything a dashboard may show, read once from the Optuna storage and MLflow."""

    name: str
    study: optuna.Study  # for optuna.visualization
    trials: list[optuna.trial.FrozenTrial]  # by number; surplus claims left out
    settings: pd.DataFrame  # one row per trial: the documents' columns and more (see _settings)
    curves: pd.DataFrame  # one row per trial and epoch: the MLflow runs' per-epoch metrics
    launch: Run | None  # the latest launch run (the report is logged there)
    ensemble: Run | None  # the latest ensemble run
    members: pd.DataFrame | None  # that run's ensemble_members.json table
    collected: datetime

    @property
    def metric(self) -> str:
        return "val_acc" if self.maximize else "val_loss"

    @property
    def maximize(self) -> bool:
        return self.study.direction.name == "MAXIMIZE"

    def count(self, state: str) -> int:
        return int((self.settings["state"] == state).sum()) if len(self.settings) else 0

    @property
    def running(self) -> bool:
        """Trials still run, or the launch has not ended (as the stores say now)."""
        launch_running = self.launch is not None and self.launch.info.status == "RUNNING"
        return launch_running or self.count("RUNNING") > 0

    def best(self) -> pd.Series | None:
        """The settings row of the best complete trial."""
        done = self.settings[self.settings["state"] == "COMPLETE"]
        if done.empty:
            return None
        index = done["value"].idxmax() if self.maximize else done["value"].idxmin()
        return done.loc[index]


@dataclass
class Dashboard:
    file: Path
    title: str
    sections: list[Callable[[StudyData], Any]]


def load_dashboard(target: str) -> Dashboard:
    """A dashboard file, or the name of a shipped one (evaluation, sweep)."""

    path = Path(target)
    if not path.exists() and path.suffix != ".py" and "/" not in target:
        path = DASHBOARDS / f"{target}.py"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in DASHBOARDS.glob("*.py")))
        raise SweeperError(f"{target}: no such dashboard file (shipped: {shipped})")
    module = import_file(path, f"sweeper_dashboard_{path.stem}")
    sections = getattr(module, "sections", None)
    if not isinstance(sections, list | tuple) or not sections or not all(map(callable, sections)):
        raise SweeperError(
            f"{path}: defines no `sections = [function, ...]` of functions section(data) "
            "(see dashboards/evaluation.py for the shape)"
        )
    title = getattr(module, "title", path.stem)
    return Dashboard(file=path, title=str(title), sections=list(sections))


def collect(name: str, sweep: Sweep, mlflow_url: str) -> StudyData:
    """Read the study, its trial runs and their metric histories, and the ensemble run."""

    from sweeper import tracking
    from sweeper.storage import load_stored_study, make_storage

    study = load_stored_study(name, make_storage(sweep.storage_url), sweep.storage_url)
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    runs = {run.info.run_id: run for run in tracking.runs_of_study(sweep.tracking_uri, name)}
    histories = {
        run_id: tracking.metric_histories(sweep.tracking_uri, run_id, CURVE_METRICS)
        for run_id in runs
    }
    curves = _curves(trials, runs, histories)
    ensemble = tracking.latest_run(sweep.tracking_uri, name, "ensemble")
    return StudyData(
        name=name,
        study=study,
        trials=trials,
        settings=_settings(trials, runs, curves, mlflow_url.rstrip("/")),
        curves=curves,
        launch=tracking.latest_run(sweep.tracking_uri, name, "launch"),
        ensemble=ensemble,
        members=tracking.ensemble_table(sweep.tracking_uri, ensemble) if ensemble else None,
        collected=datetime.now(),
    )


def _own_run(trial: optuna.trial.FrozenTrial, runs: dict[str, Run]) -> Run | None:
    """The trial's MLflow run, unless a retry continued it (the run then counts for the retry)."""
    run = runs.get(trial.user_attrs.get("mlflow_run_id", ""))
    return run if run and run.data.tags.get("sweeper.trial") == str(trial.number) else None


def _curves(
    trials: list[optuna.trial.FrozenTrial],
    runs: dict[str, Run],
    histories: dict[str, dict[str, list]],
) -> pd.DataFrame:
    import pandas as pd

    rows: dict[tuple[int, int], dict[str, Any]] = {}
    for trial in trials:
        run = _own_run(trial, runs)
        for key, points in histories[run.info.run_id].items() if run else ():
            for step, value in points:
                row = rows.setdefault((trial.number, step), {"trial": trial.number, "epoch": step})
                row[key] = value
    columns = ["trial", "setting", "epoch", *CURVE_METRICS]
    frame = pd.DataFrame(list(rows.values()), columns=[c for c in columns if c != "setting"])
    labels = {t.number: _label(t) for t in trials}
    frame.insert(1, "setting", frame["trial"].map(labels))
    return frame.sort_values(["trial", "epoch"]).reset_index(drop=True)


def _label(trial: optuna.trial.FrozenTrial) -> str:
    """A setting's short name: trial number, model, optimizer and the suggested values."""
    config = trial.user_attrs.get("config", {})
    parts = [f"#{trial.number}", str(config.get("model", "")), str(config.get("optimizer", ""))]
    parts += [
        f"{k}={_short(v)}" for k, v in trial.params.items() if k not in ("model", "optimizer")
    ]
    return " ".join(p for p in parts if p)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _settings(
    trials: list[optuna.trial.FrozenTrial],
    runs: dict[str, Run],
    curves: pd.DataFrame,
    mlflow_url: str,
) -> pd.DataFrame:
    """One row per trial: the documents' evaluation columns, then state, timing and links."""
    import pandas as pd

    seconds = curves.groupby("trial")["seconds"].sum(min_count=1)
    epochs = curves.dropna(subset=["val_acc"]).groupby("trial")["epoch"].max()
    rows = []
    for t in trials:
        config = t.user_attrs.get("config", {})
        linked = runs.get(t.user_attrs.get("mlflow_run_id", ""))
        run = _own_run(t, runs)  # metrics only from the trial's own run
        metrics = run.data.metrics if run else {}
        device = linked.data.tags.get("sweeper.device", "") if linked else config.get("device")
        optimizer = config.get("optimizer")
        best_epoch = metrics.get("best_epoch")
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "setting": _label(t),
                "model": _model(config),
                "gpu": "O" if str(device).startswith("cuda") else "X",
                "device": device,
                "batch_size": config.get("batch_size"),
                "activation": config.get("activation"),
                "init": config.get("init"),
                "optimizer": optimizer,
                "lr": config.get("lr"),
                "momentum": config.get("momentum") if optimizer in MOMENTUM_OPTIMIZERS else None,
                "weight_decay": config.get("weight_decay"),
                "lr_decay": _lr_decay(config),
                "train_minutes": seconds.get(t.number, math.nan) / 60,
                "best_epoch": int(best_epoch) if best_epoch else None,
                "epochs_run": epochs.get(t.number),
                "val_acc": metrics.get("best_val_acc"),
                "value": t.value,
                "other": ", ".join(
                    f"{k}={_short(v)}" for k, v in t.params.items() if k not in SHOWN
                ),
                "status": t.user_attrs.get("train_status", ""),
                "fail_reason": _fail_reason(t),
                "retry_of": t.system_attrs.get("failed_trial"),
                "worker": t.user_attrs.get("worker", ""),
                "start": t.datetime_start,
                "end": t.datetime_complete,
                "mlflow_run": _run_url(mlflow_url, linked) if linked else "",
                "run_id": linked.info.run_id if linked else "",
            }
        )
    frame = pd.DataFrame(rows, columns=list(SETTINGS))
    return frame.astype(
        {k: "Int64" for k in ("batch_size", "best_epoch", "epochs_run", "retry_of")}
    )


def _fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    if trial.state.name != "FAIL":
        return ""
    if "interrupted" in trial.user_attrs:
        return "interrupted by Ctrl-C or SIGTERM"
    return trial.user_attrs.get("fail_reason", "no heartbeat: its worker died")


def _model(config: dict[str, Any]) -> str:
    model = str(config.get("model", ""))
    extras = ["bn"] if config.get("batch_norm") else []
    if config.get("dropout"):
        extras.append(f"dropout {config['dropout']:g}")
    if config.get("pretrained"):
        extras.append("pretrained")
    return f"{model} ({', '.join(extras)})" if extras else model


def _lr_decay(config: dict[str, Any]) -> str:
    schedule = config.get("schedule", "")
    if schedule == "step":
        at = ", ".join(f"{m:g}" for m in config.get("milestones", []))
        schedule = f"step x{config.get('gamma', 0.1):g} at {at} of the epochs"
    if config.get("warmup_epochs"):
        schedule += f", warmup {config['warmup_epochs']:g} epochs"
    return schedule


def _run_url(mlflow_url: str, run: Run) -> str:
    return f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def render(dashboard: Dashboard, data: StudyData) -> tuple[str, pd.DataFrame | None]:
    """The report page (one self-contained HTML string) and its first table."""
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs

    body: list[str] = []
    first_table = None
    for number, section in enumerate(dashboard.sections):
        name = getattr(section, "__name__", f"section{number}")
        try:
            blocks = section(data)
        except Exception as exc:
            line = line_in(exc, dashboard.file)
            raise SweeperError(
                f"{dashboard.file}:{line}: section {name}(): {one_line(exc)}"
            ) from None
        parts = []
        for index, block in enumerate(blocks if isinstance(blocks, list | tuple) else [blocks]):
            if isinstance(block, go.Figure):
                parts.append(_figure(block, f"{name}-{index}"))
            elif isinstance(block, pd.DataFrame):
                first_table = block if first_table is None else first_table
                parts.append(_table(block))
            elif isinstance(block, str):
                parts.append(_paragraphs(block))
            else:
                raise SweeperError(
                    f"{dashboard.file}: section {name}() returned {type(block).__name__}; "
                    "return a plotly Figure, a pandas DataFrame, a str or a list of them"
                )
        heading = (section.__doc__ or name).strip().splitlines()[0]
        body.append(
            f'<section id="{html.escape(name)}"><h2>{html.escape(heading)}</h2>'
            + "".join(parts)
            + "</section>"
        )
    state = "running" if data.running else "finished"
    launch = data.launch.info.status if data.launch else "no launch run"
    page = PAGE.format(
        title=html.escape(f"{dashboard.title}: {data.name}"),
        plotly=get_plotlyjs(),
        meta=html.escape(
            f"Study {data.name} ({state}; launch run {launch}), read "
            f"{data.collected:%Y-%m-%d %H:%M:%S} from the Optuna storage and MLflow; "
            f"dashboard {dashboard.file.name}."
        ),
        body="\n".join(body),
    )
    return page, first_table


def _figure(figure: Any, div_id: str) -> str:
    import plotly.io as pio

    height = figure.layout.height or 460
    return pio.to_html(
        figure,
        full_html=False,
        include_plotlyjs=False,  # embedded once in the page's head
        div_id=div_id,
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def _table(frame: pd.DataFrame) -> str:
    """A plain HTML table; URLs become links, rows carry their trial state as a class."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for record in frame.to_dict("records"):
        state = html.escape(str(record.get("state", "")))
        cells = "".join(f"<td>{_cell(value)}</td>" for value in record.values())
        rows.append(f'<tr class="{state}">{cells}</tr>')
    return f'<div class="table"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def _cell(value: Any) -> str:
    import pandas as pd

    if pd.api.types.is_scalar(value) and pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    text = str(value)
    if text.startswith(("http://", "https://")):
        return f'<a href="{html.escape(text)}">{html.escape(text.rsplit("/", 1)[-1][:8])}</a>'
    return html.escape(text)


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(p.strip())}</p>" for p in text.split("\n\n") if p.strip())


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; }} h2 {{ font-size: 17px; margin-top: 28px; }}
.meta {{ color: #666; }} .table {{ overflow-x: auto; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }}
th {{ background: #f3f3f3; }}
tr.FAIL td {{ background: #fde8e8; }} tr.PRUNED td {{ color: #777; }}
tr.RUNNING td, tr.WAITING td {{ background: #fff6d6; font-style: italic; }}
</style>
<script type="text/javascript">{plotly}</script>
</head><body>
<h1>{title}</h1><p class="meta">{meta}</p>
{body}
</body></html>
"""


def write_report(
    dashboard: Dashboard, data: StudyData, out: Path, tracking_uri: str
) -> tuple[list[Path], Run | None]:
    """Write the HTML (and CSV of the first table); log them to the latest launch run."""
    from sweeper import tracking

    page, table = render(dashboard, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    paths = [out]
    if table is not None:
        csv = out.with_suffix(".csv")
        table.to_csv(csv, index=False)
        paths.append(csv)
    if data.launch is not None:
        tracking.log_report(tracking_uri, data.launch.info.run_id, paths)
    return paths, data.launch


def register(commands: Any) -> None:
    """Add `report` and `dashboard` to the `sweeper` command's subparsers."""
    report = commands.add_parser("report", help="render a study's dashboard to an HTML page")
    report.add_argument("study", help="a study name or file")
    report.add_argument(
        "--dashboard", default="evaluation", help="a dashboard file or a shipped name: "
        "evaluation (the default), sweep"
    )  # fmt: skip
    report.add_argument("--out", help="HTML file (default: <dir>/reports/<study>-<dashboard>.html)")
    _store_flags(report)
    report.add_argument(
        "--mlflow-url",
        default="http://127.0.0.1:5000",
        help="MLflow UI that the run links point to (default: %(default)s, as `sweeper ui`)",
    )
    report.set_defaults(func=cmd_report)

    dashboard = commands.add_parser("dashboard", help="the live optuna-dashboard on the study")
    dashboard.add_argument("study", help="a study name or file")
    _store_flags(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    dashboard.set_defaults(func=cmd_dashboard)


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="sweeps", help="sweep directory (default: ./sweeps)")
    parser.add_argument("--storage", help="Optuna storage URL (default: <dir>/optuna.db)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: <dir>/mlflow.db)")


def _sweep(args: argparse.Namespace) -> tuple[Sweep, str]:
    """The sweep's stores (never created here) and the study's name."""
    from sweeper.pool import Sweep
    from sweeper.study import load_by_name_or_file

    _, name = load_by_name_or_file(args.study)
    return Sweep.existing(args.dir, args.storage, args.tracking_uri), name


def cmd_report(args: argparse.Namespace) -> int:
    dashboard = load_dashboard(args.dashboard)
    sweep, name = _sweep(args)
    default = sweep.dir / "reports" / f"{name}-{dashboard.file.stem}.html"
    out = Path(args.out) if args.out else default
    if out.suffix.lower() not in (".html", ".htm"):
        raise SweeperError(f"--out {out}: the report is HTML; name a .html file")
    data = collect(name, sweep, args.mlflow_url)
    paths, launch = write_report(dashboard, data, out, sweep.tracking_uri)
    print(f"report: {' and '.join(str(p) for p in paths)}")
    if launch is None:
        print(f"report: no launch run of '{name}' in MLflow; the report is not logged there")
    else:
        print(f"report: logged to {_run_url(args.mlflow_url.rstrip('/'), launch)} (report/)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    sweep, name = _sweep(args)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SweeperError("dashboard: optuna-dashboard is not installed; pip install it") from None
    from sweeper.storage import load_stored_study, make_storage

    storage = make_storage(sweep.storage_url)
    load_stored_study(name, storage, sweep.storage_url)  # one line if it is not there
    study_id = storage.get_study_id_from_name(name)
    url = f"http://{args.host}:{args.port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard: {url} (Ctrl-C stops it)")
    sys.stdout.flush()
    run_server(sweep.storage_url, host=args.host, port=args.port)
    return 0
