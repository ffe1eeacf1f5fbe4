"""Alert texts for Slack, Jira and ServiceNow, built from a breach payload, escaped for each target's markup.

Pure functions (no I/O). User-controlled strings (DAG ids, task ids, tags, budget and team names) can never
inject mentions, links or formatting:

* Slack: user values go only into ``plain_text`` Block Kit objects (no mrkdwn, no mentions, no emoji codes);
  the notification fallback ``text`` escapes ``& < >`` and drops mrkdwn control characters; links are built
  from the configured base URL with every path segment percent-encoded.
* Jira (wiki markup): every markup character is backslash-escaped and ``://`` is broken so nothing auto-links.
* ServiceNow: plain text; ``[code]`` HTML blocks are removed.

A payload (an outbox row) looks like::

    {"kind": "breach" | "recovery" | "approval", "breach": Breach.to_json(), "dag_id": ..., "run_id": ...,
     "task_id": ..., "team": ..., "dag_url": ..., "link": ..., "top_tasks": [{"task_id", "cost", "currency"}],
     "route": {...}}
"""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from finops_provider.core.money import Money

# ------------------------------------------------------------------------------------------- escaping
_SLACK_CTRL = re.compile(r"[*_~`]")


def slack_escape(text: Any) -> str:
    """Escape for Slack mrkdwn: ``& < >`` as entities (no ``<!here>``, ``<@U..>`` or ``<url|..>``), no formatting."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SLACK_CTRL.sub("", s)


_JIRA_SPECIAL = re.compile(r"([\\*_+\-^~?{}\[\]|!#@()])")


def jira_escape(text: Any) -> str:
    """Escape for Jira wiki markup: markup characters backslash-escaped, no auto-links, one line."""
    s = " ".join(str(text).split())
    s = _JIRA_SPECIAL.sub(r"\\\1", s)
    return s.replace("://", "&#58;//")


_SN_CODE = re.compile(r"\[/?code\]", re.IGNORECASE)


def servicenow_escape(text: Any) -> str:
    """ServiceNow fields are plain text, but journal fields render ``[code]..[/code]`` as HTML: remove it."""
    return _SN_CODE.sub("", str(text))


def dag_url(base_url: str | None, dag_id: str, run_id: str | None = None) -> str | None:
    """The Airflow UI URL of a DAG (or run), every segment percent-encoded."""
    if not base_url:
        return None
    url = f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}"
    if run_id:
        url += f"/runs/{quote(run_id, safe='')}"
    return url


def alert_id(dedupe_key: str) -> str:
    """A short stable id for a breach (Jira label, ServiceNow correlation id)."""
    return "finops-" + hashlib.sha256(dedupe_key.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- facts
def _money(m: dict[str, str] | None) -> str:
    if not m:
        return "n/a"
    return Money(Decimal(m["amount"]), m["currency"]).format()


def facts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs common to every target; values are raw (escape per target)."""
    b = payload.get("breach") or {}
    out: list[tuple[str, str]] = [("Budget", str(b.get("budget", "")))]
    if b:
        out.append(("Period", f"{b.get('period')} from {b.get('period_start', '')[:10]}"))
        out.append(("Threshold", f"{b.get('threshold_pct')} % ({b.get('basis')})"))
        out.append(("Budget amount", _money(b.get("budget_amount"))))
        out.append(("Spend", _money(b.get("actual"))))
        out.append(("Forecast", _money(b.get("forecast"))))
        out.append(("Utilisation", f"{b.get('utilisation_pct')} %"))
    for key, label in (("dag_id", "DAG"), ("run_id", "Run"), ("task_id", "Task"), ("team", "Team")):
        if payload.get(key):
            out.append((label, str(payload[key])))
    return out


def title(payload: dict[str, Any]) -> str:
    b = payload.get("breach") or {}
    kind = payload.get("kind", "breach")
    if kind == "recovery":
        return f"FinOps: budget {b.get('budget')} is back under {b.get('threshold_pct')} %"
    if kind == "status":
        what = f"task {payload.get('task_id')}" if payload.get("task_id") else "run"
        cost = ", ".join(f"{v} {k}" for k, v in sorted((payload.get("run_cost") or {}).items())) or "n/a"
        return f"FinOps: {payload.get('dag_id')} {what} {payload.get('state') or ''}; estimated run cost {cost}"
    if kind == "approval":
        return f"FinOps: approval needed to continue over budget {b.get('budget')}"
    return (
        f"FinOps: budget {b.get('budget')} crossed {b.get('threshold_pct')} % "
        f"({b.get('basis')}: {b.get('utilisation_pct')} %)"
    )


def top_tasks_lines(payload: dict[str, Any], limit: int = 5) -> list[str]:
    return [
        f"{t['task_id']}: {Money(Decimal(t['cost']), t['currency']).format()}"
        for t in (payload.get("top_tasks") or [])[:limit]
    ]


# ------------------------------------------------------------------------------------------- renderers
def _plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text[:2000] or " ", "emoji": False}


def render_slack(payload: dict[str, Any]) -> dict[str, Any]:
    """A Slack message body (webhook or ``chat.postMessage``): Block Kit with user values as ``plain_text``."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(title(payload)[:150])},
        {"type": "section", "fields": [_plain(f"{k}: {v}") for k, v in facts(payload)][:10]},
    ]
    tops = top_tasks_lines(payload)
    if tops:
        blocks.append({"type": "section", "text": _plain("Top tasks: " + "; ".join(tops))})
    links = []
    if payload.get("link"):
        links.append(f"<{payload['link']}|Open the Required Actions page>")
    if payload.get("dag_url"):
        links.append(f"<{payload['dag_url']}|Open the DAG>")
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "  ".join(links)}})
    return {
        "text": slack_escape(title(payload)),
        "blocks": blocks,
        "unfurl_links": False,
        "unfurl_media": False,
    }


def render_jira(payload: dict[str, Any], project: str, issue_type: str = "Task") -> dict[str, Any]:
    """Jira ``fields`` for ``POST /rest/api/2/issue``: summary (plain), description (escaped wiki markup)."""
    lines = [f"*{k}:* {jira_escape(v)}" for k, v in facts(payload)]
    tops = top_tasks_lines(payload)
    if tops:
        lines.append("*Top tasks:*")
        lines.extend(f"* {jira_escape(t)}" for t in tops)
    if payload.get("dag_url"):
        lines.append(f"[Open the DAG|{payload['dag_url']}]")
    b = payload.get("breach") or {}
    lines.append(f"Dedupe key: {jira_escape(b.get('dedupe_key', ''))}")
    return {
        "project": {"key": project},
        "issuetype": {"name": issue_type},
        "summary": " ".join(title(payload).split())[:250],
        "description": "\n".join(lines),
        "labels": ["finops", alert_id(b.get("dedupe_key", ""))],
    }


def render_servicenow(payload: dict[str, Any]) -> dict[str, Any]:
    """A ServiceNow incident (Table API ``POST /api/now/table/incident``)."""
    b = payload.get("breach") or {}
    lines = [f"{k}: {servicenow_escape(v)}" for k, v in facts(payload)]
    tops = top_tasks_lines(payload)
    if tops:
        lines.append("Top tasks: " + "; ".join(servicenow_escape(t) for t in tops))
    if payload.get("dag_url"):
        lines.append(f"DAG: {payload['dag_url']}")
    return {
        "short_description": servicenow_escape(" ".join(title(payload).split()))[:160],
        "description": "\n".join(lines),
        "category": "FinOps",
        "urgency": "2",
        "impact": "2",
        "correlation_id": alert_id(b.get("dedupe_key", "")),
        "correlation_display": "finops-provider",
    }
