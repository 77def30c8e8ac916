"""`sweeper report` and `sweeper dashboard`: a study's trials and runs as one offline HTML page.

A dashboard file (see dashboards/) defines `sections = [...]`, functions of one StudyData
(sweeper.report.studydata) that each return a plotly Figure, a DataFrame (a table), a str (a
paragraph) or a list of those, headed by their docstring's first line (None leaves the section
out); and optionally `title`. A dashboard that declares `studies = "several"`
(dashboards/compare.py) compares studies: its sections take a list of StudyData instead. The
page and its first table (as CSV) are logged to each study's latest launch run in MLflow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from markupsafe import Markup

from sweeper.errors import SweeperError
from sweeper.spec.userfile import import_file, line_in, one_line
from sweeper.stores.paths import MLFLOW_URL, SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage

if TYPE_CHECKING:  # pandas loads only for a report: the CLI, a launcher's start, stay quick
    import optuna
    import pandas as pd

    from sweeper.report.studydata import StudyData


DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


class Dashboard(NamedTuple):
    file: Path
    title: str
    sections: list[Callable[[Any], Any]]  # of one StudyData, or of a list of them if several
    several: bool  # the module says `studies = "several"`: it compares studies


def default_dashboard(studies: int) -> str:
    return "evaluation" if studies == 1 else "compare"


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
    studies = getattr(module, "studies", "one")
    if studies not in ("one", "several"):
        raise SweeperError(f'{path}: studies = {studies!r}; say "one" (the default) or "several"')
    title = str(getattr(module, "title", path.stem))
    return Dashboard(path, title, list(sections), studies == "several")


def check_fits(board: Dashboard, names: list[str]) -> None:
    """One line if the dashboard is for one study and gets several, or the other way round."""
    if len(set(names)) < len(names):
        raise SweeperError(f"{' '.join(names)}: a study is named twice; name each study once")
    if board.several and len(names) == 1:
        raise SweeperError(
            f"dashboard {board.file.name} compares studies; name two or more "
            f"(sweeper report {names[0]} OTHER), or drop --dashboard for one study's report"
        )
    if not board.several and len(names) > 1:
        raise SweeperError(
            f"dashboard {board.file.name} shows one study, not {len(names)}; drop --dashboard "
            "to compare them (dashboards/compare.py), or name one study"
        )


def render(
    dashboard: Dashboard, data: StudyData | list[StudyData]
) -> tuple[str, pd.DataFrame | None]:
    """The report page (one self-contained HTML string) and its first table, of one study or
    (for a dashboard of several) of a list of them."""
    from plotly.offline import get_plotlyjs  # plotly loads only for a report

    studies = data if isinstance(data, list) else [data]
    check_fits(dashboard, [d.name for d in studies])
    sections, tables = _sections(dashboard, studies if dashboard.several else studies[0])
    states = ", ".join(
        f"{d.name} ({'running' if d.running else 'finished'}; "
        f"launch run {d.launch['status'] if d.launch is not None else 'none'})"
        for d in studies
    )
    page = _page().render(
        title=f"{dashboard.title}: {' vs '.join(d.name for d in studies)}",
        plotly=Markup(get_plotlyjs()),
        meta=f"{'Study' if len(studies) == 1 else 'Studies'} {states}; read"
        f" {studies[0].collected:%Y-%m-%d %H:%M:%S} from the Optuna storage and MLflow;"
        f" dashboard {dashboard.file.name}.",
        sections=sections,
    )
    return page, tables[0] if tables else None


def _sections(dashboard: Dashboard, argument: Any) -> tuple[list[dict], list[pd.DataFrame]]:
    """Each section that has something to show: its id, heading and blocks (figures as HTML,
    tables as rows, paragraphs); and the tables, in order."""
    import pandas as pd
    import plotly.graph_objects as go

    sections, tables = [], []
    for number, section in enumerate(dashboard.sections):
        name = getattr(section, "__name__", f"section{number}")
        try:
            blocks = section(argument)
        except Exception as exc:
            where = f"{dashboard.file}:{line_in(exc, dashboard.file)}"
            raise SweeperError(f"{where}: section {name}(): {one_line(exc)}") from None
        if blocks is None:  # the section has nothing to show for this study
            continue
        shown = []
        for index, block in enumerate(blocks if isinstance(blocks, list | tuple) else [blocks]):
            if isinstance(block, go.Figure):
                shown.append({"figure": Markup(_figure(block, f"{name}-{index}"))})
            elif isinstance(block, pd.DataFrame):
                tables.append(block)
                shown.append({"table": _rows(block)})
            elif isinstance(block, str):
                shown.append({"paragraphs": [p.strip() for p in block.split("\n\n") if p.strip()]})
            else:
                raise SweeperError(
                    f"{dashboard.file}: section {name}() returned {type(block).__name__}; "
                    "return a plotly Figure, a pandas DataFrame, a str or a list of them"
                )
        heading = (section.__doc__ or name).strip().splitlines()[0]
        sections.append({"id": name, "heading": heading, "blocks": shown})
    return sections, tables


def _figure(figure: Any, div_id: str) -> str:
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,  # embedded once in the page's head
        div_id=div_id,
        default_height=f"{figure.layout.height or 460}px",
        config={"displaylogo": False, "responsive": True},
    )


def _rows(frame: pd.DataFrame) -> dict[str, Any]:
    """A table as the page shows it: its columns, and per row its trial state (the row's class)
    and its cells as text."""
    states = frame["state"].astype(str) if "state" in frame.columns else [None] * len(frame)
    cells = frame.astype(object).where(frame.notna(), None).itertuples(index=False)
    rows = [{"state": state, "cells": [_cell(value) for value in row]}
            for state, row in zip(states, cells, strict=True)]  # fmt: skip
    return {"columns": [str(column) for column in frame.columns], "rows": rows}


def _cell(value: Any) -> Any:
    """A cell: blank for a missing value, datetimes to the second, floats to 4 significant
    digits, URLs as links named by their last 8 characters."""
    if value is None:
        return ""
    if hasattr(value, "strftime"):
        return f"{value:%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return Markup('<a href="{}">{}</a>').format(value, value.rsplit("/", 1)[-1][:8])
    return value


@functools.cache
def _page() -> Any:
    import jinja2  # MLflow's own dependency (Flask): the page is a template

    environment = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(PAGE)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; }
.meta { color: #666; } .table { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; }
tr.FAIL td { background: #fde8e8; } tr.PRUNED td { color: #777; }
tr.RUNNING td, tr.WAITING td { background: #fff6d6; font-style: italic; }
</style>
<script type="text/javascript">{{ plotly }}</script>
</head><body>
<h1>{{ title }}</h1><p class="meta">{{ meta }}</p>
{% for section in sections %}
<section id="{{ section.id }}"><h2>{{ section.heading }}</h2>
{% for block in section.blocks %}
{% if block.figure %}
{{ block.figure }}
{% elif block.table %}
<div class="table"><table><thead><tr>
{%- for column in block.table.columns %}<th>{{ column }}</th>{% endfor -%}
</tr></thead><tbody>
{%- for row in block.table.rows -%}
<tr{% if row.state %} class="{{ row.state }}"{% endif %}>
{%- for cell in row.cells %}<td>{{ cell }}</td>{% endfor -%}
</tr>
{%- endfor -%}
</tbody></table></div>
{% else %}
{% for paragraph in block.paragraphs %}<p>{{ paragraph }}</p>{% endfor %}

{% endif %}
{% endfor %}
</section>
{% endfor %}
</body></html>
"""


def write_report(
    names: str | list[str], stores: SweepPaths, dashboard: str | None = None,
    out: str | None = None, mlflow_url: str = MLFLOW_URL, study: optuna.Study | None = None,
) -> tuple[list[Path], dict[str, str | None]]:  # fmt: skip
    """The dashboard of one study or several as an HTML page (and its table as CSV), logged to
    each study's launch run; return the files and, per study, the URL of the launch run it was
    logged to (None: the study has no launch run). `study`: the one study as the launcher holds
    it (a second copy of 10,000 trials would double the launcher's memory at its end)."""
    from sweeper.report.studydata import collect, run_url

    names = [names] if isinstance(names, str) else names
    board = load_dashboard(dashboard or default_dashboard(len(names)))
    check_fits(board, names)
    page_path = Path(out) if out else stores.report("-vs-".join(names), board.file.stem)
    if page_path.suffix.lower() not in (".html", ".htm"):
        raise SweeperError(f"--out {page_path}: the report is HTML; name a .html file")
    studies = [collect(name, stores, mlflow_url, study if len(names) == 1 else None)
               for name in names]  # fmt: skip
    page, table = render(board, studies if board.several else studies[0])
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text(page, encoding="utf-8")
    files = [page_path]
    if table is not None:
        table.to_csv(page_path.with_suffix(".csv"), index=False)
        files.append(page_path.with_suffix(".csv"))
    from sweeper.stores import tracking  # MLflow: loaded on demand (collect loaded it)

    logged: dict[str, str | None] = {}
    for data in studies:
        logged[data.name] = None
        if data.launch is not None:
            tracking.log_report(stores.tracking_uri, data.launch["run_id"], files)
            logged[data.name] = run_url(mlflow_url.rstrip("/"), data.launch)
    return files, logged


def serve_dashboard(stores: SweepPaths, name: str, host: str, port: int) -> None:
    """The live optuna-dashboard on the study, until Ctrl-C."""
    from optuna_dashboard import run_server  # its web server: only this command needs it

    storage = make_storage(stores.storage_url)
    load_stored_study(name, storage, stores.storage_url)  # one line if it is not there
    study_id = storage.get_study_id_from_name(name)
    url = f"http://{host}:{port}/dashboard/studies/{study_id}"
    print(f"optuna-dashboard: {url} (Ctrl-C stops it)", flush=True)
    run_server(storage, host=host, port=port)
