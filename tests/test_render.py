"""report.render on stand-in study data: the page's sections, tables, figures and paragraphs,
escaped, with no sweep behind them (the e2e report tests draw real ones in Chromium)."""

from __future__ import annotations

import datetime
import types
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import pytest

from sweeper.errors import SweeperError
from sweeper.report.render import Dashboard, render

STUDY = types.SimpleNamespace(name="s<1>", running=True, launch=pd.Series({"status": "RUNNING"}),
                              collected=datetime.datetime(2026, 1, 2, 3, 4, 5))  # fmt: skip


def trials(_: object) -> pd.DataFrame:
    """The trials <table>"""
    return pd.DataFrame({
        "trial": [0, 1], "state": ["COMPLETE", "FAIL"], "value": [0.123456, None],
        "mlflow_run": ["http://127.0.0.1:5000/#/experiments/1/runs/abcdef123456", ""],
        "start": [pd.Timestamp("2026-01-01 10:00:01"), pd.NaT],
    })  # fmt: skip


def curves(_: object) -> list:
    """Curves"""
    return [go.Figure(go.Scatter(x=[1, 2], y=[3, 4])), "one <b>bold</b>\n\ntwo"]


def nothing(_: object) -> None:
    """Left out"""


def test_a_page_of_sections() -> None:
    board = Dashboard(Path("mine.py"), "Eval & co", [trials, curves, nothing], several=False)
    page, first = render(board, STUDY)
    assert first is not None and list(first["trial"]) == [0, 1]
    assert "<h1>Eval &amp; co: s&lt;1&gt;</h1>" in page
    assert "Study s&lt;1&gt; (running; launch run RUNNING); read 2026-01-02 03:04:05" in page
    table = page[page.index('<section id="trials">') : page.index('<section id="curves">')]
    assert "<h2>The trials &lt;table&gt;</h2>" in table
    assert (
        "<tr><th>trial</th><th>state</th><th>value</th><th>mlflow_run</th><th>start</th>" in table
    )
    assert ('<tr class="COMPLETE"><td>0</td><td>COMPLETE</td><td>0.1235</td><td><a href="http://'
            '127.0.0.1:5000/#/experiments/1/runs/abcdef123456">abcdef12</a></td>'
            "<td>2026-01-01 10:00:01</td></tr>") in table  # fmt: skip
    assert '<tr class="FAIL"><td>1</td><td>FAIL</td><td></td><td></td><td></td></tr>' in table
    assert 'id="curves-0" class="plotly-graph-div"' in page
    assert "<p>one &lt;b&gt;bold&lt;/b&gt;</p><p>two</p>" in page
    assert "Left out" not in page and page.count("<script") >= 2  # plotly.js once, the figure


def test_a_table_without_states_and_a_bad_block() -> None:
    def plain(_: object) -> pd.DataFrame:
        return pd.DataFrame({"a": [1]})

    page, _ = render(Dashboard(Path("d.py"), "t", [plain], several=False), STUDY)
    assert "<tbody><tr><td>1</td></tr></tbody>" in page

    def wrong(_: object) -> int:
        return 3

    with pytest.raises(SweeperError, match=r"d.py: section wrong\(\) returned int"):
        render(Dashboard(Path("d.py"), "t", [wrong], several=False), STUDY)
