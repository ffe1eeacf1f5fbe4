"""Slack, Jira and ServiceNow notifiers against local HTTP servers (exact requests asserted)."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer

from finops_provider.core.alerts import alert_id
from finops_provider.notifications.jira import FinOpsJiraNotifier
from finops_provider.notifications.servicenow import FinOpsServiceNowNotifier
from finops_provider.notifications.slack import FinOpsSlackNotifier

PAYLOAD = {
    "kind": "breach",
    "breach": {
        "dedupe_key": "b|day:2024-09-01T00:00:00Z|actual|100",
        "budget": "b",
        "period": "day",
        "period_start": "2024-09-01T00:00:00+00:00",
        "threshold_pct": "100",
        "basis": "actual",
        "budget_amount": {"amount": "10", "currency": "USD"},
        "actual": {"amount": "12", "currency": "USD"},
        "forecast": None,
        "utilisation_pct": "120.00",
    },
    "dag_id": "etl <!here>",
    "route": {"jira_project": "DE", "slack_channel": "#finops"},
}


def _conn(monkeypatch: pytest.MonkeyPatch, name: str, **c: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(c))


def test_slack_webhook(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(monkeypatch, "slack_t", conn_type="slackwebhook", password=httpserver.url_for("/services/T/B/X"))
    httpserver.expect_oneshot_request("/services/T/B/X", method="POST").respond_with_data("ok")
    FinOpsSlackNotifier(slack_conn_id="slack_t", payload=PAYLOAD)({"dag": None})
    ((req, _),) = httpserver.log
    body = req.get_json()
    assert body["text"] == "FinOps: budget b crossed 100 % (actual: 120.00 %)"
    assert {"type": "plain_text", "text": "DAG: etl <!here>", "emoji": False} in body["blocks"][1]["fields"]


def test_slack_webhook_5xx_raises(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(monkeypatch, "slack_t", conn_type="slackwebhook", password=httpserver.url_for("/services/T/B/X"))
    httpserver.expect_request("/services/T/B/X").respond_with_data("internal_error", status=500)
    with pytest.raises(Exception, match=r"500|internal_error"):
        FinOpsSlackNotifier(slack_conn_id="slack_t").send_payload(PAYLOAD)


def test_slack_api_posts_to_the_route_channel(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(
        monkeypatch,
        "slack_api",
        conn_type="slack",
        password="xoxb-1",
        extra=json.dumps({"base_url": httpserver.url_for("/api/")}),
    )
    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_json({"ok": True, "ts": "1.2"})
    assert FinOpsSlackNotifier(slack_conn_id="slack_api").send_payload(PAYLOAD) == "1.2"
    ((req, _),) = httpserver.log
    assert req.headers["Authorization"] == "Bearer xoxb-1" and req.get_json()["channel"] == "#finops"


def test_jira_creates_once_per_breach(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(monkeypatch, "jira_t", conn_type="jira", host=httpserver.url_for("/"), login="bot", password="tok")
    label = alert_id(PAYLOAD["breach"]["dedupe_key"])
    httpserver.expect_oneshot_request(
        "/rest/api/2/search",
        query_string={"startAt": "0", "maxResults": "1", "fields": "key", "jql": f'labels = "{label}"'},
    ).respond_with_json({"issues": []})
    httpserver.expect_oneshot_request("/rest/api/2/issue", method="POST").respond_with_json({"key": "DE-7"}, status=201)
    assert FinOpsJiraNotifier(jira_conn_id="jira_t").send_payload(PAYLOAD) == "DE-7"
    fields = httpserver.log[-1][0].get_json()["fields"]
    assert fields["project"] == {"key": "DE"} and label in fields["labels"]
    assert "etl <\\!here>" in fields["description"]
    # a retry after a crash finds the issue by its label and creates nothing
    httpserver.expect_oneshot_request("/rest/api/2/search").respond_with_json({"issues": [{"key": "DE-7"}]})
    assert FinOpsJiraNotifier(jira_conn_id="jira_t").send_payload(PAYLOAD) == "DE-7"
    assert [r.path for r, _ in httpserver.log].count("/rest/api/2/issue") == 1


def test_servicenow_incident_with_correlation_id(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(monkeypatch, "sn_t", conn_type="http", host=httpserver.url_for("/").rstrip("/"), login="sn", password="pw")
    cid = alert_id(PAYLOAD["breach"]["dedupe_key"])
    httpserver.expect_oneshot_request("/api/now/table/incident", method="GET").respond_with_json({"result": []})
    httpserver.expect_oneshot_request("/api/now/table/incident", method="POST").respond_with_json(
        {"result": {"sys_id": "abc", "number": "INC001"}}, status=201
    )
    assert FinOpsServiceNowNotifier(servicenow_conn_id="sn_t").send_payload(PAYLOAD) == "INC001"
    get, post = (r for r, _ in httpserver.log)
    assert get.args["sysparm_query"] == f"correlation_id={cid}"
    body = post.get_json()
    assert body["correlation_id"] == cid and body["short_description"].startswith("FinOps: budget b crossed 100 %")
    assert post.headers["Authorization"].startswith("Basic ")
