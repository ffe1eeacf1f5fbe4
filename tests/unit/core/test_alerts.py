"""Alert texts: every target gets escaped, injection-free text."""

from __future__ import annotations

import json

from finops_provider.core.alerts import (
    alert_id,
    dag_url,
    jira_escape,
    render_jira,
    render_servicenow,
    render_slack,
    servicenow_escape,
    slack_escape,
)

EVIL = "etl_<!channel>_*bold*_<https://evil.example|click> @here [~admin] [x|http://evil] {code}"

PAYLOAD = {
    "kind": "breach",
    "breach": {
        "dedupe_key": "b|month:2024-09-01T00:00:00Z|actual|100",
        "budget": "team-monthly",
        "period": "month",
        "period_start": "2024-09-01T00:00:00+00:00",
        "threshold_pct": "100",
        "basis": "actual",
        "budget_amount": {"amount": "100", "currency": "USD"},
        "actual": {"amount": "123.456", "currency": "USD"},
        "forecast": {"amount": "300", "currency": "USD"},
        "utilisation_pct": "123.46",
    },
    "dag_id": EVIL,
    "task_id": "t",
    "dag_url": dag_url("http://af:8080", EVIL),
    "top_tasks": [{"task_id": EVIL, "cost": "100.005", "currency": "USD"}],
}


def test_slack_user_strings_are_plain_text_only() -> None:
    body = render_slack(PAYLOAD)
    assert "<!channel>" not in body["text"]
    for block in body["blocks"]:
        texts = block.get("fields", []) + ([block["text"]] if "text" in block else [])
        for t in texts:
            if t["type"] == "mrkdwn":  # only our link line is mrkdwn, and its URL is percent-encoded
                assert "<!" not in t["text"] and "evil" not in t["text"].split("%")[0]
                assert "|click" not in t["text"]
            else:
                assert t["type"] == "plain_text" and t["emoji"] is False
    assert "123.46 USD" in json.dumps(body)
    assert slack_escape("<!here> *x* & _y_") == "&lt;!here&gt; x &amp; y"


def test_dag_url_percent_encodes_the_id() -> None:
    assert dag_url("http://af/", "a b|c>") == "http://af/dags/a%20b%7Cc%3E"
    assert dag_url(None, "x") is None


def test_jira_markup_is_escaped() -> None:
    fields = render_jira(PAYLOAD, "DE")
    d = fields["description"]
    assert "[~admin]" not in d and "\\[\\~admin\\]" in d
    assert "https://evil" not in d.replace("[Open the DAG|http://af:8080/dags/", "")
    assert "\\{code\\}" in d
    assert fields["project"] == {"key": "DE"} and fields["labels"] == [
        "finops",
        alert_id(PAYLOAD["breach"]["dedupe_key"]),
    ]
    assert "*Spend:* 123.46 USD" in d and "*Forecast:* 300.00 USD" in d
    assert jira_escape("a\nb*c") == "a b\\*c"


def test_servicenow_incident() -> None:
    inc = render_servicenow({**PAYLOAD, "dag_id": "x[code]<script>[/code]"})
    assert "[code]" not in inc["description"] and inc["correlation_id"].startswith("finops-")
    assert servicenow_escape("[CODE]a[/Code]") == "a"
    assert len(inc["short_description"]) <= 160
