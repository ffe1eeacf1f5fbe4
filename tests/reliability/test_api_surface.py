"""Who can change what: the dashboard API has no write endpoint, and pausing addresses exactly one DAG id (quoted
into the path, never a pattern), whatever characters the id holds. 401 / 403 on the real api-server are proven in
tests/integration/test_dashboard_airflow.py (test_every_route_needs_an_airflow_identity).
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from pytest_httpserver import HTTPServer

from finops_provider.core.retry import RetryPolicy

HOSTILE_DAG_IDS = ["%", "*", "~", "etl%", "etl_*", "a/../b", "etl?update_mask=x", "ünï code", "x#frag", ".", ".."]


def test_dashboard_routes_are_read_only(tmp_path) -> None:
    from finops_provider.plugins.dashboard import create_app

    app = create_app(ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
    methods = {m for r in app.routes for m in (getattr(r, "methods", None) or ())}
    assert methods and methods <= {"GET", "HEAD"}, methods


@pytest.mark.parametrize("dag_id", [pytest.param(d, id=repr(d)) for d in HOSTILE_DAG_IDS])
def test_pause_patches_exactly_one_dag_id(
    dag_id: str, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    from finops_provider.hooks.airflow_api import AirflowApiHook

    conn = {"conn_type": "finops_airflow_api", "host": httpserver.url_for("/"), "login": "bot", "password": "pw"}
    monkeypatch.setenv("AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT", json.dumps(conn))
    httpserver.expect_request("/auth/token", method="POST").respond_with_json({"access_token": "jwt"}, status=201)
    seen: list[str] = []

    def patch(request):  # type: ignore[no-untyped-def]
        seen.append(request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.full_path)
        from werkzeug import Response

        return Response(json.dumps({"dag_id": dag_id, "is_paused": True}), 200, content_type="application/json")

    httpserver.expect_request(__import__("re").compile(r"^/api/v2/dags.*"), method="PATCH").respond_with_handler(patch)
    AirflowApiHook(retry_policy=RetryPolicy(max_attempts=1, budget_s=2)).set_paused(dag_id)
    figures.injection_payloads += 1
    (uri,) = seen
    path, _, query = uri.partition("?")
    expected = quote(dag_id, safe="") if dag_id not in (".", "..") else dag_id.replace(".", "%2E")
    assert path == f"/api/v2/dags/{expected}"  # exactly that id, percent-encoded: one path segment
    assert query == "update_mask=is_paused"  # no dag_id_pattern, no other parameter


def test_an_empty_dag_id_is_refused() -> None:
    from finops_provider.hooks.airflow_api import AirflowApiHook

    with pytest.raises(ValueError, match="dag_id is empty"):
        AirflowApiHook._dag_path("")
