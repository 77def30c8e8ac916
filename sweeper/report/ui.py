"""`sweeper ui`: the MLflow UI on a sweep's store, opened on a study's trials; stopping it (Ctrl-C
or SIGTERM) stops every process the UI started.

The page is the experiment's runs in chart mode with a view that sweeper stores in the experiment
(MLflow's shared view state, a tag the UI's ?viewStateShareKey= loads): runs sorted by
best_val_acc, which also lists the trials flat (MLflow nests child runs only when runs are sorted
by start time), a table of their differing parameters and metrics, and val_acc charts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sweeper.errors import SweeperError
from sweeper.interrupt import stop_on_signals
from sweeper.records import Kind, Tag
from sweeper.stores.paths import SweepPaths

VIEW_KEY = "sweeper"
STOP_GRACE_S = 5.0
TABLE, CHARTS = "sweeper-table", "sweeper-charts"  # the sections of the view


def serve(sweep: SweepPaths, study: str | None, host: str, port: int, workers: int) -> int:
    """Run the MLflow UI until it is stopped (KeyboardInterrupt) or stops (SweeperError); print
    the URL to open once it answers. An `mlflow server` serves its own: its URL, at once."""
    from sweeper.stores import tracking  # MLflow: loaded only now

    stop_on_signals()
    experiment_id = tracking.experiment_to_show(sweep.tracking_uri, study, VIEW_KEY, trials_view())
    if sweep.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {landing_url(sweep.tracking_uri, experiment_id)}", flush=True)
        return 0
    _check_port(host, port)
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--host", host,
               "--port", str(port), "--workers", str(workers)]  # fmt: skip
    if sweep.artifact_root:
        command += ["--default-artifact-root", sweep.artifact_root]
    # The job runner serves GenAI features (LLM judges, trace jobs): 8 more processes, unused here.
    # The store's URI (a password, maybe) goes in the environment: `ps` shows command lines.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ,
           "MLFLOW_BACKEND_STORE_URI": sweep.tracking_uri}  # fmt: skip
    log = sweep.dir / "mlflow-ui.log"
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                  stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        _wait_until_answering(server, _local(host), port, log)
        local = _local(host)
        root = f"http://{f'[{local}]' if ':' in local else local}:{port}"
        print(f"MLflow UI: {landing_url(root, experiment_id)}", flush=True)
        code = server.wait()
        raise SweeperError(f"the MLflow UI stopped (exit code {code}); its log: {log}")
    finally:
        stop(server)


def trials_view() -> dict[str, Any]:
    """The runs page's state, as MLflow's UI stores it: flat rows sorted by best_val_acc (launch
    runs left out), a table of what differs between the runs shown, the val_acc charts."""
    base = {"runsCountToCompare": 10, "deleted": False, "isGenerated": False}
    line = {"lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
            "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric",
            "yAxisExpressions": [], "ignoreOutliers": False, "useGlobalXaxisKey": True,
            "useGlobalLineSmoothing": True}  # fmt: skip
    charts = [
        {"uuid": "sweeper-difference", "type": "DIFFERENCE", "metricSectionId": TABLE,
         "chartName": "Trials", "compareGroups": ["Parameters", "Model metrics"],
         "showChangeFromBaseline": False, "showDifferencesOnly": True, "baselineColumnUuid": ""},
        {"uuid": "sweeper-val-acc", "type": "LINE", "metricSectionId": CHARTS,
         "displayName": "val_acc", "metricKey": "val_acc", **line},
        {"uuid": "sweeper-best-val-acc", "type": "BAR", "metricSectionId": CHARTS,
         "displayName": "best_val_acc", "metricKey": "best_val_acc"},
    ]  # fmt: skip
    sections = [
        {"uuid": TABLE, "name": "Trials", "columns": 1, "cardHeight": 560},
        {"uuid": CHARTS, "name": "Validation accuracy", "columns": 2, "cardHeight": 360},
    ]
    shown = {"display": True, "isReordered": True, "deleted": False, "isGenerated": False}
    return {
        "searchFilter": f"tags.`{Tag.KIND}` != '{Kind.LAUNCH}'",
        "orderByKey": "metrics.`best_val_acc`",
        "orderByAsc": False,
        "compareRunCharts": [{**base, **chart} for chart in charts],
        "compareRunSections": [{**shown, **section} for section in sections],
        "isAccordionReordered": True,
    }


def landing_url(root: str, experiment_id: str | None) -> str:
    """The runs page of the experiment in chart mode with sweeper's view, the sidebar on model
    training; the list of experiments when there is none yet."""
    root = root.rstrip("/") + "/"
    if experiment_id is None:
        return f"{root}#/experiments"
    query = f"viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART&workflowType=machine_learning"
    return f"{root}#/experiments/{experiment_id}/runs?{query}"


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the server, its workers), SIGKILL what is left after
    STOP_GRACE_S."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the group is gone
            break
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
    server.wait()


def _group_alive(server: subprocess.Popen) -> bool:
    server.poll()  # reaps the leader, so that it does not count as alive
    try:
        os.killpg(server.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _local(host: str) -> str:
    """The address to reach a server listening on `host` from this machine."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _check_port(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise SweeperError(f"--port {port}: in use on {host}; give another") from None


def _wait_until_answering(server: subprocess.Popen, host: str, port: int, log: Path) -> None:
    while True:
        if server.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise SweeperError(f"the MLflow UI did not start: {lines[-1]} (log: {log})")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
