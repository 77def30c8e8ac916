"""`sweeper report` and `sweeper dashboard`: a study's trials and runs as one offline HTML page.

A dashboard file (dashboards/evaluation.py, dashboards/sweep.py) is plain Python that defines

    title = "Evaluation"                  # optional; the file name otherwise
    sections = [summary, table, curves]   # functions of one StudyData

Each section returns a plotly Figure, a pandas DataFrame (a table), a str (a paragraph) or a list
of those; the first line of its docstring is its heading. The report's first table is also
written as CSV, and both files are logged to the study's latest launch run in MLflow. What the
sections read (StudyData) is collected in sweeper.studydata.
"""

from __future__ import annotations

import argparse
import html
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweeper.errors import SweeperError
from sweeper.paths import SweepPaths
from sweeper.studydata import StudyData, collect, run_url  # dashboards may import StudyData here
from sweeper.userfile import import_file, line_in, one_line

if TYPE_CHECKING:
    import pandas as pd

DASHBOARDS = Path(__file__).resolve().parents[1] / "dashboards"


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
    launch = data.launch["status"] if data.launch is not None else "no launch run"
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
    """DataFrame.to_html, with blank NaN, floats to 4 significant digits, datetimes to the
    second and URLs as links; each row on one line, classed by its trial state if it has one."""
    shown = frame.astype(object).where(frame.notna(), "").map(_text)
    shown.columns = [html.escape(str(column)) for column in frame.columns]
    text = shown.to_html(index=False, escape=False, float_format="{:.4g}".format, border=0)
    text = re.sub(r">\s+<", "><", text)
    if "state" in frame.columns:
        states = iter(html.escape(str(state)) for state in frame["state"])
        head, tbody, body = text.partition("<tbody>")
        text = head + tbody + re.sub("<tr>", lambda _: f'<tr class="{next(states)}">', body)
    return f'<div class="table">{text}</div>'


def _text(value: Any) -> Any:
    """A cell as to_html should show it: strings escaped (URLs as links), datetimes to the
    second; numbers are left to to_html's float_format."""
    if hasattr(value, "strftime"):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if not isinstance(value, str):
        return value
    if value.startswith(("http://", "https://")):
        return f'<a href="{html.escape(value)}">{html.escape(value.rsplit("/", 1)[-1][:8])}</a>'
    return html.escape(value)


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
) -> tuple[list[Path], pd.Series | None]:
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
        tracking.log_report(tracking_uri, data.launch["run_id"], paths)
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


def _stores(args: argparse.Namespace) -> tuple[SweepPaths, str]:
    """The sweep's stores (never created here) and the study's name."""
    from sweeper.study import load_by_name_or_file

    _, name = load_by_name_or_file(args.study)
    return SweepPaths.existing(args.dir, args.storage, args.tracking_uri), name


def cmd_report(args: argparse.Namespace) -> int:
    dashboard = load_dashboard(args.dashboard)
    stores, name = _stores(args)
    out = Path(args.out) if args.out else stores.report(name, dashboard.file.stem)
    if out.suffix.lower() not in (".html", ".htm"):
        raise SweeperError(f"--out {out}: the report is HTML; name a .html file")
    data = collect(name, stores, args.mlflow_url)
    files, launch = write_report(dashboard, data, out, stores.tracking_uri)
    print(f"report: {' and '.join(str(p) for p in files)}")
    if launch is None:
        print(f"report: no launch run of '{name}' in MLflow; the report is not logged there")
    else:
        print(f"report: logged to {run_url(args.mlflow_url.rstrip('/'), launch)} (report/)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    stores, name = _stores(args)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SweeperError("dashboard: optuna-dashboard is not installed; pip install it") from None
    from sweeper.storage import load_stored_study, make_storage

    storage = make_storage(stores.storage_url)
    load_stored_study(name, storage, stores.storage_url)  # one line if it is not there
    study_id = storage.get_study_id_from_name(name)
    url = f"http://{args.host}:{args.port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard: {url} (Ctrl-C stops it)")
    sys.stdout.flush()
    run_server(stores.storage_url, host=args.host, port=args.port)
    return 0
