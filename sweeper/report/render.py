"""`sweeper report` and `sweeper dashboard`: a study's trials and runs as one offline HTML page.

A dashboard file (see dashboards/) defines `sections = [...]`, functions of one StudyData
(sweeper.report.studydata) that each return a plotly Figure, a DataFrame (a table), a str (a
paragraph) or a list of those, headed by their docstring's first line (None leaves the section
out); and optionally `title`. A dashboard that declares `studies = "several"`
(dashboards/compare.py) compares studies: its sections take a list of StudyData instead. The
page and its first table (as CSV) are logged to each study's latest launch run in MLflow.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sweeper.errors import SweeperError
from sweeper.spec.userfile import import_file, line_in, one_line
from sweeper.stores.paths import SweepPaths
from sweeper.stores.storage import load_stored_study, make_storage

if TYPE_CHECKING:  # pandas loads only for a report: the CLI, a launcher's start, stay quick
    import pandas as pd

    from sweeper.report.studydata import StudyData


DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"
MLFLOW_URL = "http://127.0.0.1:5000"  # where `sweeper ui` serves by default


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
    import pandas as pd
    import plotly.graph_objects as go  # plotly loads only for a report
    from plotly.offline import get_plotlyjs

    studies = data if isinstance(data, list) else [data]
    check_fits(dashboard, [d.name for d in studies])
    argument = studies if dashboard.several else studies[0]
    body: list[str] = []
    first_table = None
    for number, section in enumerate(dashboard.sections):
        name = getattr(section, "__name__", f"section{number}")
        try:
            blocks = section(argument)
        except Exception as exc:
            where = f"{dashboard.file}:{line_in(exc, dashboard.file)}"
            raise SweeperError(f"{where}: section {name}(): {one_line(exc)}") from None
        if blocks is None:  # the section has nothing to show for this study
            continue
        heading = html.escape((section.__doc__ or name).strip().splitlines()[0])
        body.append(f'<section id="{html.escape(name)}"><h2>{heading}</h2>')
        for index, block in enumerate(blocks if isinstance(blocks, list | tuple) else [blocks]):
            if isinstance(block, go.Figure):
                body.append(_figure(block, f"{name}-{index}"))
            elif isinstance(block, pd.DataFrame):
                first_table = block if first_table is None else first_table
                body.append(_table(block))
            elif isinstance(block, str):
                body.append(_paragraphs(block))
            else:
                raise SweeperError(
                    f"{dashboard.file}: section {name}() returned {type(block).__name__}; "
                    "return a plotly Figure, a pandas DataFrame, a str or a list of them"
                )
        body.append("</section>")
    states = ("Study " if len(studies) == 1 else "Studies ") + ", ".join(
        f"{d.name} ({'running' if d.running else 'finished'}; "
        f"launch run {d.launch['status'] if d.launch is not None else 'none'})"
        for d in studies
    )
    page = PAGE.format(
        title=html.escape(f"{dashboard.title}: {' vs '.join(d.name for d in studies)}"),
        plotly=get_plotlyjs(),
        meta=html.escape(
            f"{states}; read {studies[0].collected:%Y-%m-%d %H:%M:%S} from the Optuna storage "
            f"and MLflow; dashboard {dashboard.file.name}."
        ),
        body="\n".join(body),
    )
    return page, first_table


def _figure(figure: Any, div_id: str) -> str:
    return figure.to_html(
        full_html=False,
        include_plotlyjs=False,  # embedded once in the page's head
        div_id=div_id,
        default_height=f"{figure.layout.height or 460}px",
        config={"displaylogo": False, "responsive": True},
    )


def _table(frame: pd.DataFrame) -> str:
    """DataFrame.to_html, one line a row, each row classed by its trial state if it has one."""
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
    """A cell as to_html shows it: datetimes to the second, strings escaped (URLs as links)."""
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
    names: str | list[str], stores: SweepPaths, dashboard: str | None = None,
    out: str | None = None, mlflow_url: str = MLFLOW_URL,
) -> tuple[list[Path], dict[str, str | None]]:  # fmt: skip
    """The dashboard of one study or several as an HTML page (and its table as CSV), logged to
    each study's launch run; return the files and, per study, the URL of the launch run it was
    logged to (None: the study has no launch run)."""
    from sweeper.report.studydata import collect, run_url

    names = [names] if isinstance(names, str) else names
    board = load_dashboard(dashboard or default_dashboard(len(names)))
    check_fits(board, names)
    page_path = Path(out) if out else stores.report("-vs-".join(names), board.file.stem)
    if page_path.suffix.lower() not in (".html", ".htm"):
        raise SweeperError(f"--out {page_path}: the report is HTML; name a .html file")
    studies = [collect(name, stores, mlflow_url) for name in names]
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
