"""A real Airflow 3 (``airflow standalone``: scheduler, dag-processor, triggerer, API server; LocalExecutor;
SQLite metadata DB) on 127.0.0.1 and a free port, started once per test session, plus local HTTP servers
standing in for Slack, Jira and ServiceNow. Every process started here is stopped by PID at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from .peers import Peers

HERE = Path(__file__).parent
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = float(os.environ.get("FINOPS_IT_START_TIMEOUT", "240"))
IT_DAGS = (
    "finops_it_spender",
    "finops_it_spender_2",
    "finops_it_pause_now",
    "finops_it_twice",
    "finops_it_outage",
    "finops_it_flush",
    "finops_it_plain",
    "finops_it_gate",
    "finops_it_aggregation",
)
#: DAG files of other suites copied next to finops_it_dags.py
EXTRA_DAG_FILES = ("finops_it_aggregation.py",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class AirflowServer:
    base: str
    home: Path
    ledger_url: str
    log_path: Path
    password: str
    peers: Peers
    users: dict[str, str] = field(default_factory=dict)
    _token: str | None = None

    def token_for(self, username: str) -> str:
        """A JWT of another configured user (``viewer``, ``norole``)."""
        r = httpx.post(
            f"{self.base}/auth/token", json={"username": username, "password": self.users[username]}, timeout=30
        )
        r.raise_for_status()
        return str(r.json()["access_token"])

    def token(self) -> str:
        if self._token is None:
            r = httpx.post(f"{self.base}/auth/token", json={"username": "admin", "password": self.password}, timeout=30)
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}{path}", headers={"Authorization": f"Bearer {self.token()}"}, timeout=30, **kw
        )

    def logs(self) -> str:
        parts = [self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else "(no log)"]
        logs = sorted((self.home / "logs").rglob("*.log"), key=lambda f: f.stat().st_mtime)
        for f in logs[-8:]:
            parts.append(f"--- {f.relative_to(self.home)}\n{f.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 120, every: float = 1.0) -> Any:
        """Poll ``check`` until it returns a truthy value; fail with the Airflow logs on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except (httpx.HTTPError, KeyError, AssertionError) as e:
                last = e
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{self.logs()}")

    def trigger(self, dag_id: str) -> str:
        r = self.api("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None})
        assert r.status_code == 200, r.text
        return str(r.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        return str(self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()["state"])

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        return str(
            self.wait(
                f"run {dag_id}/{run_id} to finish",
                lambda: (s := self.run_state(dag_id, run_id)) in ("success", "failed") and s,
                timeout,
            )
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return {t["task_id"]: t["state"] for t in r.json()["task_instances"]}

    def is_paused(self, dag_id: str) -> bool:
        return bool(self.api("GET", f"/api/v2/dags/{dag_id}").json()["is_paused"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the standalone process and every descendant, each by PID."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="session")
def peers() -> Iterator[Peers]:
    p = Peers()
    yield p
    p.close()


@pytest.fixture(scope="session")
def airflow(peers: Peers) -> Iterator[AirflowServer]:
    if shutil.which("airflow", path=str(VENV_BIN)) is None:
        pytest.fail(f"no airflow executable in {VENV_BIN}")
    root = Path(tempfile.mkdtemp(prefix="finops-it-"))
    home = root / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "plugins").mkdir()
    shutil.copy(HERE / "dags" / "finops_it_dags.py", home / "dags" / "finops_it_dags.py")
    for extra in EXTRA_DAG_FILES:  # other suites' DAG files (the aggregation DAG)
        shutil.copy(HERE / "dags" / extra, home / "dags" / extra)
    # the listener and dashboard plugins, as the airflow.plugins entry points register them once installed
    (home / "plugins" / "finops_listener_plugin.py").write_text(
        "from finops_provider.plugins.finops_plugin import FinOpsDashboardPlugin, FinOpsListenerPlugin  # noqa: F401\n"
    )
    password = "it-" + os.urandom(8).hex()
    # "viewer" may read DAGs; "norole" is a user the simple auth manager authorizes for nothing (403s)
    users = {"admin": password, "viewer": "vw-" + os.urandom(8).hex(), "norole": "nr-" + os.urandom(8).hex()}
    (root / "passwords.json").write_text(json.dumps(users))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ledger_url = f"sqlite:///{root / 'ledger.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FINOPS"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(HERE.parents[1]),
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(home / "plugins"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="8",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin,viewer:viewer,norole:",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(root / "passwords.json"),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=base,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
        AIRFLOW__FINOPS__OUTBOX_BACKOFF_BASE_S="1",
        AIRFLOW__FINOPS__LISTENER_ENABLED="True",
        FINOPS_HOME=str(root / "finops"),
        FINOPS_CONFIG=str(HERE / "config.yaml"),
        FINOPS_LEDGER_URL=ledger_url,
        AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT=json.dumps(
            {"conn_type": "http", "host": base, "login": "admin", "password": password}
        ),
        AIRFLOW_CONN_SLACK_DEFAULT=json.dumps(
            {"conn_type": "slackwebhook", "password": f"{peers.url}/services/T000/B000/XXXX"}
        ),
        AIRFLOW_CONN_SLACK_OUTAGE=json.dumps(
            {"conn_type": "slackwebhook", "password": f"{peers.url}/outage/T000/B1/Y"}
        ),
        AIRFLOW_CONN_JIRA_DEFAULT=json.dumps(
            {"conn_type": "jira", "host": peers.url, "login": "finops-bot", "password": "jira-token"}
        ),
        AIRFLOW_CONN_SERVICENOW_DEFAULT=json.dumps(
            {"conn_type": "http", "host": peers.url, "login": "sn-bot", "password": "sn-pw"}
        ),
    )
    log_path = root / "standalone.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "standalone"],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    server = AirflowServer(base, home, ledger_url, log_path, password, peers, users=users)
    try:
        server.wait(
            "the API server",
            lambda: proc.poll() is None and httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200,
            START_TIMEOUT_S,
            2,
        )
        for dag_id in IT_DAGS:
            server.wait(
                f"DAG {dag_id} to be parsed",
                lambda d=dag_id: server.api("GET", f"/api/v2/dags/{d}").status_code == 200,
                120,
                2,
            )
        yield server
    finally:
        _stop(proc)
        if os.environ.get("FINOPS_IT_KEEP"):
            print(f"integration files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
