"""Notification targets down (Slack, Jira and ServiceNow answering 5xx, or not listening at all) while a budget
breaches: the DAG is still paused, exactly once; the alerts wait in the durable outbox and are delivered exactly
once each when the targets recover, however many callbacks evaluate the budget meanwhile.

Peers: ``tests/integration/peers.py`` (Slack webhooks, Jira REST v2, ServiceNow Table API) and a local Airflow
REST API v2 (pytest-httpserver). The code under test is the callbacks' runtime (``run_enforcement`` / ``drain``).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Iterator
from decimal import Decimal

import pytest
from integration.peers import Peers  # tests/integration (a site-packages "tests" package shadows tests.integration)
from pytest_httpserver import HTTPServer

from finops_provider.callbacks.runtime import drain, run_enforcement
from finops_provider.core.config import parse_config
from finops_provider.core.enforcement import Subject
from finops_provider.core.ledger import Ledger
from finops_provider.core.outbox import DONE, Outbox, events
from finops_provider.core.records import build_record

BUDGET = {
    "name": "etl-day",
    "scope": {"dag": "etl"},
    "period": "day",
    "amount": "100",
    "thresholds": [
        {"pct": 80, "actions": ["notify"]},
        {"pct": 100, "actions": ["notify", "ticket"]},
        {"pct": 120, "actions": ["incident", "pause_after_run"]},
    ],
}
CONFIG = parse_config({"teams": {"data": {"jira_project": "DE"}}, "budgets": [BUDGET]})
SECRET_HOOK = "/services/T000/B000/hook-secret-9f8e7d"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    return port


@pytest.fixture
def peers() -> Iterator[Peers]:
    p = Peers()
    yield p
    p.close()


def _connections(monkeypatch: pytest.MonkeyPatch, base: str) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_DEFAULT", json.dumps({"conn_type": "slackwebhook", "password": base + SECRET_HOOK})
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_JIRA_DEFAULT",
        json.dumps({"conn_type": "jira", "host": base + "/", "login": "bot", "password": "t"}),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVICENOW_DEFAULT",
        json.dumps({"conn_type": "http", "host": base, "login": "sn", "password": "p"}),
    )


@pytest.fixture
def airflow_api(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> HTTPServer:
    conn = {"conn_type": "finops_airflow_api", "host": httpserver.url_for("/"), "login": "bot", "password": "pw"}
    monkeypatch.setenv("AIRFLOW_CONN_FINOPS_AIRFLOW_API_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW__FINOPS__OUTBOX_BACKOFF_BASE_S", "0")  # failed deliveries are due again at once
    httpserver.expect_request("/auth/token", method="POST").respond_with_json({"access_token": "jwt"}, status=201)
    httpserver.expect_request("/api/v2/dags/etl/dagRuns/r1/taskInstances", method="GET").respond_with_json(
        {"task_instances": [{"task_id": "t", "state": "success", "map_index": -1}], "total_entries": 1}
    )
    httpserver.expect_request("/api/v2/dags/etl", method="PATCH").respond_with_json(
        {"dag_id": "etl", "is_paused": True}
    )
    return httpserver


def _spend(ledger: Ledger, amount: str, task: str) -> None:
    now = dt.datetime.now(dt.UTC)
    ledger.ingest(
        [
            build_record(
                billed_cost=Decimal(amount),
                billing_currency="USD",
                charge_period_start=now - dt.timedelta(seconds=30),
                charge_period_end=now,
                x_dag_id="etl",
                x_run_id="r1",
                x_task_id=task,
                x_team="data",
                x_line_item_id=f"etl/r1/{task}/-1/1",
                x_cost_kind="estimate",
                x_source="airflow-estimate",
            )
        ],
        source="airflow-estimate",
    )


def _sent(peers: Peers) -> dict[str, int]:
    return {
        "slack": len(peers.state.find("POST", "/services/")),
        "jira": len(peers.state.find("POST", "/rest/api/2/issue", status=201)),
        "servicenow": len(peers.state.find("POST", "/api/now/table/incident", status=201)),
    }


@pytest.mark.parametrize(
    "outage", [pytest.param("5xx", id="targets-5xx"), pytest.param("unreachable", id="unreachable")]
)
def test_pause_happens_and_alerts_are_delivered_once_after_recovery(
    outage: str, peers: Peers, airflow_api: HTTPServer, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, figures
) -> None:
    if outage == "5xx":
        _connections(monkeypatch, peers.url)
        peers.state.fail_paths.update({"/services/", "/rest/api/", "/api/now/"})
    else:
        _connections(monkeypatch, f"http://127.0.0.1:{_closed_port()}")
    subject = Subject(dag_id="etl", run_id="r1", task_id="t", team="data")
    with Ledger(sqlite_url) as ledger:
        _spend(ledger, "85", "a")
        res1 = run_enforcement(ledger, CONFIG, subject)  # 80 %: a Slack alert, which fails
        _spend(ledger, "45", "b")
        res2 = run_enforcement(ledger, CONFIG, subject)  # 130 %: Slack, Jira, ServiceNow fail; the pause must not
        for _ in range(3):  # later callbacks of the run evaluate again and retry the outbox while targets are down
            assert run_enforcement(ledger, CONFIG, subject).enqueued == []

        pauses = [r for r, _ in airflow_api.log if r.method == "PATCH"]
        assert len(pauses) == 1 and pauses[0].path == "/api/v2/dags/etl"
        assert [e["dag_id"] for e in events(ledger, kinds=["pause"])] == ["etl"]
        pending = {i["kind"]: i for i in Outbox(ledger).items() if i["status"] != DONE}
        assert set(pending) == {"slack", "jira", "servicenow"} and all(i["attempts"] >= 2 for i in pending.values())
        figures.fault(f"notify:{outage}", sum(i["attempts"] for i in Outbox(ledger).items() if i["status"] != DONE))
        assert _sent(peers) == {"slack": 0, "jira": 0, "servicenow": 0}

        # the targets recover: the next drains deliver each alert once; further drains send nothing
        if outage == "5xx":
            peers.state.fail_paths.clear()
        else:
            _connections(monkeypatch, peers.url)
        for _ in range(3):
            drain(ledger)
        run_enforcement(ledger, CONFIG, subject)
        items = Outbox(ledger).items()
    keys = res1.enqueued + res2.enqueued
    assert len(keys) == len(set(keys)) == 5
    assert {i["status"] for i in items} == {DONE}
    sent = _sent(peers)
    figures.checked(valid=4, lost=4 - sum(sent.values()), duplicates=sum(sent.values()) - 4)
    assert sent == {"slack": 2, "jira": 1, "servicenow": 1}
    assert len([r for r, _ in airflow_api.log if r.method == "PATCH"]) == 1
