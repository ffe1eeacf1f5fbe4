"""The Slack digest: summary lines from the data, user text as plain_text only, a safe link, sent through the
webhook and API transports to a local HTTP server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from finops_provider.core.money import Money
from finops_provider.core.summary import build_summary
from finops_provider.reports.digest import build_digest, digest_lines, send_digest


@pytest.fixture(scope="module")
def summary(demo_ledger: dict[str, Any]) -> dict[str, Any]:
    return build_summary(demo_ledger["ledger"], demo_ledger["config"], now=demo_ledger["now"])


def _conn(monkeypatch: pytest.MonkeyPatch, name: str, **c: str) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{name.upper()}", json.dumps(c))


def test_digest_lines_come_from_the_summary(summary: dict) -> None:
    lines = digest_lines(summary)
    usd = summary["totals"]["billed"]["USD"]
    assert any(line.startswith(f"Spend {Money.of(usd, 'USD').format()}") for line in lines)
    assert any(line.startswith("Spend ") and line.endswith(")") and "EUR" in line for line in lines)
    top = summary["breakdowns"]["team"][0]
    assert top["key"] in next(line for line in lines if line.startswith("Top teams: "))
    assert lines[-2 if summary["paused_dags"] else -1].startswith(f"Breaches: {len(summary['breaches'])};")
    assert "Paused by FinOps: ingest_orders" in lines


@pytest.mark.parametrize(
    ("link", "want"),
    [
        pytest.param(
            "https://airflow.example/finops/", "<https://airflow.example/finops/|Open the full report>", id="https"
        ),
        pytest.param(
            "https://x/a|b>c <!here>", "<https://x/a%7Cb%3Ec%20%3C%21here%3E|Open the full report>", id="injection"
        ),
    ],
)
def test_digest_body_is_plain_text_with_a_safe_link(summary: dict, link: str, want: str) -> None:
    body = build_digest(summary, link)
    assert body["unfurl_links"] is False
    assert body["blocks"][0]["text"]["type"] == "plain_text" and body["blocks"][1]["text"]["type"] == "plain_text"
    assert body["blocks"][-1]["text"] == {"type": "mrkdwn", "text": want}


def test_sent_through_the_webhook(summary: dict, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(monkeypatch, "slack_digest", conn_type="slackwebhook", password=httpserver.url_for("/services/T/B/D"))
    httpserver.expect_oneshot_request("/services/T/B/D", method="POST").respond_with_data("ok")
    assert send_digest(summary, slack_conn_id="slack_digest", link="https://airflow.example/finops/") is None
    ((req, _),) = httpserver.log
    body = req.get_json()
    assert body["text"].startswith("FinOps summary: month from 2026-10-01 to 2026-11-01")
    assert "\n".join(digest_lines(summary)) == body["blocks"][1]["text"]["text"]


def test_sent_through_the_api(summary: dict, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _conn(
        monkeypatch,
        "slack_digest_api",
        conn_type="slack",
        password="xoxb-1",
        extra=json.dumps({"base_url": httpserver.url_for("/api/")}),
    )
    httpserver.expect_request("/api/chat.postMessage", method="POST").respond_with_json({"ok": True, "ts": "9.9"})
    assert send_digest(summary, slack_conn_id="slack_digest_api", channel="#finops") == "9.9"
    ((req, _),) = httpserver.log
    assert req.get_json()["channel"] == "#finops" and req.headers["Authorization"] == "Bearer xoxb-1"
    with pytest.raises(ValueError, match="give channel="):
        send_digest(summary, slack_conn_id="slack_digest_api")
