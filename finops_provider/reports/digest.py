"""The Slack digest of the executive summary: totals and trend per currency, top teams, burn-down outlook,
breaches, anomalies, paused DAGs and a link to the full report — sent through the FinOps Slack notifier's
transports (Incoming Webhook or ``chat.postMessage``).

User-controlled text (team, budget and DAG names) goes out only as ``plain_text``; the link is the one mrkdwn
element and is percent-encoded so it cannot inject Slack markup.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import quote

from finops_provider.core.alerts import _plain, slack_escape
from finops_provider.core.summary import fmt_money
from finops_provider.notifications.slack import FinOpsSlackNotifier


def digest_title(summary: dict[str, Any]) -> str:
    p = summary["period"]
    return f"FinOps summary: {p['kind']} from {p['start'][:10]} to {p['end'][:10]}"


def digest_lines(summary: dict[str, Any], top: int = 3) -> list[str]:
    """The digest as plain text lines (also what tests read)."""
    lines = []
    for cur, amount in summary["totals"]["billed"].items():
        tr = summary["trend"].get(cur, {})
        chg = tr.get("change_to_date_pct") or tr.get("change_pct")
        vs = f" ({chg} % vs the previous period)" if chg is not None else ""
        lines.append(f"Spend {fmt_money(amount, cur)}{vs}")
        for u_key, label in (("unallocated", "unallocated"), ("idle", "idle")):
            u = (summary.get(u_key) or {}).get(cur)
            if u:
                lines.append(f"  {label} {fmt_money(u['amount'], cur)} ({u['share_pct']} %)")
    teams = [r for r in summary["breakdowns"].get("team", []) if r["key"] != "(other)"][:top]
    if teams:
        lines.append("Top teams: " + "; ".join(f"{r['key']} {fmt_money(r['amount'], r['currency'])}" for r in teams))
    movers = (summary.get("top_movers") or {}).get("team") or []
    ups = [m for m in movers if not m["change"].startswith("-")][:top]
    if ups:
        lines.append(
            "Biggest increases: " + "; ".join(f"{m['key']} +{fmt_money(m['change'], m['currency'])}" for m in ups)
        )
    for b in summary.get("budget_burndown") or []:
        if b.get("breach_eta") or Decimal(b["utilisation_pct"]) >= 100:
            lines.append(b["eta_text"])
    lines.append(f"Breaches: {len(summary['breaches'])}; anomalies: {len(summary['anomalies'])}")
    paused = summary.get("paused_dags") or []
    if paused:
        lines.append("Paused by FinOps: " + ", ".join(p["dag_id"] for p in paused))
    return lines


def build_digest(summary: dict[str, Any], link: str | None = None) -> dict[str, Any]:
    """A Slack message body (Block Kit) for the summary."""
    head = digest_title(summary)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(head[:150])},
        {"type": "section", "text": _plain("\n".join(digest_lines(summary)))},
    ]
    if link:
        safe = quote(link, safe=":/?=&#%.-_~")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"<{safe}|Open the full report>"}})
    return {"text": slack_escape(head), "blocks": blocks, "unfurl_links": False, "unfurl_media": False}


class FinOpsSlackDigestNotifier(FinOpsSlackNotifier):
    """Send the executive-summary digest (``payload = {"summary": ..., "link": ...}``) over the same Slack
    transports as :class:`FinOpsSlackNotifier` (connection type ``slack``: ``chat.postMessage``; else webhook)."""

    def send_payload(self, payload: dict[str, Any]) -> str | None:
        from airflow.sdk.bases.hook import BaseHook

        body = build_digest(payload["summary"], payload.get("link"))
        if BaseHook.get_connection(self.slack_conn_id).conn_type == "slack":
            from airflow.providers.slack.hooks.slack import SlackHook

            if not self.channel:
                raise ValueError(f"connection {self.slack_conn_id} is a Slack API connection: give channel=")
            resp = SlackHook(slack_conn_id=self.slack_conn_id, timeout=self.timeout).call(
                "chat.postMessage", json={"channel": self.channel, **body}
            )
            return str(resp.get("ts") or "")
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        SlackWebhookHook(slack_webhook_conn_id=self.slack_conn_id, timeout=self.timeout).send_dict(body)
        return None


def send_digest(
    summary: dict[str, Any],
    *,
    slack_conn_id: str = "slack_default",
    channel: str | None = None,
    link: str | None = None,
) -> str | None:
    """Send the digest now (from a task); returns the message ``ts`` for the API transport."""
    return FinOpsSlackDigestNotifier(slack_conn_id=slack_conn_id, channel=channel).send_payload(
        {"summary": summary, "link": link}
    )
