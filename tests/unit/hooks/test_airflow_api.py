"""AirflowApiHook against a local HTTP server speaking the Airflow REST API v2 (exact requests asserted)."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from finops_provider.core.retry import RetryPolicy
from finops_provider.hooks.airflow_api import AirflowApiError, AirflowApiHook


@pytest.fixture
def api(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> AirflowApiHook:
    conn = {"conn_type": "finops_airflow_api", "host": httpserver.url_for("/"), "login": "bot", "password": "s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT", json.dumps(conn))
    httpserver.expect_request(
        "/auth/token", method="POST", json={"username": "bot", "password": "s3cret"}
    ).respond_with_json({"access_token": "jwt-1"}, status=201)
    return AirflowApiHook(retry_policy=RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.02, budget_s=2))


def test_pause_patches_exactly_that_dag(api: AirflowApiHook, httpserver: HTTPServer) -> None:
    httpserver.expect_request(
        "/api/v2/dags/etl.daily-v2",
        method="PATCH",
        query_string="update_mask=is_paused",
        json={"is_paused": True},
        headers={"Authorization": "Bearer jwt-1"},
    ).respond_with_json({"dag_id": "etl/daily", "is_paused": True})
    assert api.set_paused("etl.daily-v2")["is_paused"] is True
    assert [r.path for r, _ in httpserver.log] == ["/auth/token", "/api/v2/dags/etl.daily-v2"]


def test_expired_token_is_renewed_and_5xx_retried(api: AirflowApiHook, httpserver: HTTPServer) -> None:
    answers = iter([Response(status=401), Response(status=503), Response(json.dumps({"dag_id": "d"}), 200)])
    httpserver.expect_request("/api/v2/dags/d", method="GET").respond_with_handler(lambda r: next(answers))
    assert api.get_dag("d") == {"dag_id": "d"}
    paths = [r.path for r, _ in httpserver.log]  # token, 401, new token, 503, retry with the same token
    assert paths == ["/auth/token", "/api/v2/dags/d", "/auth/token", "/api/v2/dags/d", "/api/v2/dags/d"]


def test_forbidden_is_not_retried(api: AirflowApiHook, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v2/dags/d", method="PATCH").respond_with_json({"detail": "Forbidden"}, status=403)
    with pytest.raises(AirflowApiError, match="HTTP 403"):
        api.set_paused("d")
    assert [r.path for r, _ in httpserver.log].count("/api/v2/dags/d") == 1


def test_stop_run_skips_unstarted_and_fails_running(api: AirflowApiHook, httpserver: HTTPServer) -> None:
    base = "/api/v2/dags/d/dagRuns/r1/taskInstances"
    httpserver.expect_request(base, method="GET").respond_with_json(
        {
            "task_instances": [
                {"task_id": "spender", "state": "success", "map_index": -1},
                {"task_id": "next", "state": None, "map_index": -1},
                {"task_id": "busy", "state": "running", "map_index": -1},
                {"task_id": "m", "state": "queued", "map_index": 2},
                {"task_id": "done", "state": "success", "map_index": -1},
            ]
        }
    )
    seen: list[tuple[str, dict]] = []

    def record(req: Request) -> Response:
        seen.append((req.path, req.get_json()))
        return Response("{}", 200, content_type="application/json")

    for p in ("/next", "/busy", "/m/2"):
        httpserver.expect_request(base + p, method="PATCH").respond_with_handler(record)
    assert api.stop_run("d", "r1", keep=("spender",)) == {"skipped": ["next", "m"], "failed": ["busy"]}
    assert sorted(seen) == sorted(
        [
            (base + "/next", {"new_state": "skipped"}),
            (base + "/busy", {"new_state": "failed"}),
            (base + "/m/2", {"new_state": "skipped"}),
        ]
    )


def test_test_connection_reports_failures(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_BAD_API",
        json.dumps({"conn_type": "http", "host": httpserver.url_for("/"), "login": "x", "password": "y"}),
    )
    httpserver.expect_request("/auth/token").respond_with_json({"detail": "Invalid credentials"}, status=401)
    ok, msg = AirflowApiHook(airflow_api_conn_id="bad_api").test_connection()
    assert ok is False and "401" in msg and "y" not in msg.split("HTTP")[0]


def test_a_human_unpause_is_recorded_once_with_who(api: AirflowApiHook, httpserver: HTTPServer, tmp_path) -> None:
    import datetime as dt

    from finops_provider.callbacks.runtime import reconcile_unpause
    from finops_provider.core.ledger import Ledger
    from finops_provider.core.outbox import events, record_event

    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    record_event(led, "pause", actor="finops:etl-day", dag_id="etl", run_id="r1", reason="budget etl-day at 120 %")
    paused_at = events(led, dag_id="etl", kinds=("pause",))[-1]["at"]
    # the audit log answer, in the shape of GET /api/v2/eventLogs (newest first)
    query = {"dag_id": "etl", "order_by": "-when", "limit": "50"}
    httpserver.expect_request("/api/v2/eventLogs", method="GET", query_string=query).respond_with_json(
        {"event_logs": [
            {"event_log_id": 9, "when": "2026-01-05T11:00:00Z", "dag_id": "etl", "event": "patch_dag", "owner": "alice",
             "extra": '{"is_paused": false, "method": "PATCH"}'},
            {"event_log_id": 8, "when": "2026-01-05T10:00:00Z", "dag_id": "etl", "event": "patch_dag",
             "owner": "finops-bot",
             "extra": '{"is_paused": true, "method": "PATCH"}'},
        ], "total_entries": 2}
    )  # fmt: skip
    assert reconcile_unpause(led, "etl", "r2", paused_at - dt.timedelta(minutes=1)) is False  # run before the pause
    assert reconcile_unpause(led, "etl", "r2", paused_at + dt.timedelta(hours=1)) is True
    assert reconcile_unpause(led, "etl", "r3", paused_at + dt.timedelta(hours=2)) is False  # recorded once
    (ev,) = events(led, dag_id="etl", kinds=("unpause",))
    assert ev["actor"] == "alice" and ev["run_id"] == "r2"
