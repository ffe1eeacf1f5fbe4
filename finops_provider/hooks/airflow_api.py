"""The Airflow public REST API (v2) as seen by FinOps enforcement: pause / unpause a DAG, stop a run, audit log.

Airflow 3 forbids ORM access from tasks and callbacks, so enforcement goes through the public API like any
other client: ``POST /auth/token`` (username / password of the connection) returns a JWT, then
``PATCH /api/v2/dags/{dag_id}?update_mask=is_paused``. The user needs a role that may edit DAGs.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote

import httpx
from airflow.sdk.bases.hook import BaseHook

from finops_provider.core.retry import RetryPolicy, call_with_retry

#: task-instance states that have not finished (pause_now stops them)
UNFINISHED = (None, "none", "scheduled", "queued", "up_for_retry", "up_for_reschedule", "deferred", "awaiting_input")
RUNNING = ("running", "restarting")


class AirflowApiError(RuntimeError):
    """The Airflow API answered with an error; the message has the status and the endpoint (never the token)."""

    def __init__(self, status: int, what: str, body: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:300]}")
        self.status = status


def _segment(value: str, what: str) -> str:
    """One URL path segment that addresses exactly ``value``: percent-encoded, and ``.`` / ``..`` encoded too,
    since HTTP clients resolve dot segments (``/dags/.`` would become ``/dags/``: every DAG)."""
    if not value:
        raise ValueError(f"{what} is empty; the Airflow API needs the exact id")
    seg = quote(value, safe="")
    return seg.replace(".", "%2E") if seg in (".", "..") else seg


def _retryable(e: BaseException) -> bool:
    if isinstance(e, AirflowApiError):
        return e.status >= 500 or e.status == 429
    return isinstance(e, httpx.TransportError)


class AirflowApiHook(BaseHook):
    """Talks to an Airflow API server with a user from a connection.

    The connection (type ``finops_airflow_api`` or ``http``): host = base URL such as
    ``https://airflow.example.com`` (or host + schema + port), login / password = an Airflow user allowed to
    edit DAGs and task instances.

    :param airflow_api_conn_id: connection id (default ``finops_airflow_api_default``).
    :param timeout: seconds per request.
    """

    conn_name_attr = "airflow_api_conn_id"
    default_conn_name = "finops_airflow_api_default"
    conn_type = "finops_airflow_api"
    hook_name = "Airflow REST API (FinOps enforcement)"

    def __init__(
        self,
        *,
        airflow_api_conn_id: str = default_conn_name,
        timeout: float = 10.0,
        retry_policy: RetryPolicy | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.airflow_api_conn_id = airflow_api_conn_id
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(max_attempts=4, base_s=0.5, cap_s=4.0, budget_s=15.0)
        self._token: str | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": ["extra"],
            "relabeling": {"host": "API base URL", "login": "Username"},
            "placeholders": {"host": "https://airflow.example.com", "login": "finops-enforcer"},
        }

    @cached_property
    def _conn(self) -> Any:
        return self.get_connection(self.airflow_api_conn_id)

    @property
    def base_url(self) -> str:
        c = self._conn
        host = (c.host or "").rstrip("/")
        if "://" not in host:
            host = f"{c.schema or 'http'}://{host}"
            if c.port:
                host = f"{host}:{c.port}"
        return host

    @cached_property
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=self.timeout)

    # ---------------------------------------------------------------------- transport
    def _fetch_token(self) -> str:
        c = self._conn
        r = self.client.post("/auth/token", json={"username": c.login, "password": c.password})
        if r.status_code >= 400:
            raise AirflowApiError(r.status_code, "POST /auth/token", r.text)
        token = r.json().get("access_token")
        if not token:
            raise AirflowApiError(r.status_code, "POST /auth/token", "no access_token in the answer")
        return str(token)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One authenticated call with retries on 5xx / 429 / transport errors; returns the decoded JSON."""

        def once() -> Any:
            if self._token is None:
                self._token = self._fetch_token()
            r = self.client.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if r.status_code == 401:  # expired token: fetch a new one once
                self._token = self._fetch_token()
                r = self.client.request(method, path, headers={"Authorization": f"Bearer {self._token}"}, **kwargs)
            if r.status_code >= 400:
                raise AirflowApiError(r.status_code, f"{method} {path}", r.text)
            return r.json() if r.content else None

        return call_with_retry(
            once, what=f"Airflow API {method} {path}", is_retryable=_retryable, policy=self.retry_policy
        )

    # ---------------------------------------------------------------------- operations
    @staticmethod
    def _dag_path(dag_id: str) -> str:
        return f"/api/v2/dags/{_segment(dag_id, 'dag_id')}"

    def get_dag(self, dag_id: str) -> dict[str, Any]:
        return dict(self.request("GET", self._dag_path(dag_id)))

    def set_paused(self, dag_id: str, paused: bool = True) -> dict[str, Any]:
        """Pause (or unpause) exactly ``dag_id`` (no pattern matching); returns the DAG as the API shows it."""
        return dict(
            self.request(
                "PATCH", self._dag_path(dag_id), params={"update_mask": "is_paused"}, json={"is_paused": paused}
            )
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"{self._dag_path(dag_id)}/dagRuns/{_segment(run_id, 'run_id')}/taskInstances"
        return list(self.request("GET", path, params={"limit": 1000}).get("task_instances", []))

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str, map_index: int = -1) -> Any:
        run, task = _segment(run_id, "run_id"), _segment(task_id, "task_id")
        path = f"{self._dag_path(dag_id)}/dagRuns/{run}/taskInstances/{task}"
        if map_index >= 0:
            path += f"/{map_index}"
        return self.request("PATCH", path, json={"new_state": state})

    def stop_run(self, dag_id: str, run_id: str, *, keep: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """pause_now: skip the run's tasks that have not started and fail those running (except ``keep``)."""
        done: dict[str, list[str]] = {"skipped": [], "failed": []}
        for ti in self.task_instances(dag_id, run_id):
            tid, state, mi = ti["task_id"], ti.get("state"), int(ti.get("map_index", -1))
            if tid in keep:
                continue
            if state in UNFINISHED:
                self.set_task_state(dag_id, run_id, tid, "skipped", mi)
                done["skipped"].append(tid)
            elif state in RUNNING:
                self.set_task_state(dag_id, run_id, tid, "failed", mi)
                done["failed"].append(tid)
        return done

    def event_logs(self, dag_id: str, limit: int = 50) -> list[dict[str, Any]]:
        res = self.request("GET", "/api/v2/eventLogs", params={"dag_id": dag_id, "order_by": "-when", "limit": limit})
        return list(res.get("event_logs", []))

    def test_connection(self) -> tuple[bool, str]:
        try:
            self._fetch_token()
            return True, f"token issued by {self.base_url}"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"
