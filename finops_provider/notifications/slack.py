"""Slack notifier: budget alerts through an Incoming Webhook (``slackwebhook`` connection) or the Web API
(``slack`` connection, ``chat.postMessage``), built on the official slack provider hooks."""

from __future__ import annotations

from typing import Any

from finops_provider.core.alerts import render_slack
from finops_provider.notifications.base import FinOpsNotifier


class FinOpsSlackNotifier(FinOpsNotifier):
    """Send a FinOps alert to Slack.

    The connection type decides the transport: ``slack`` (API token; needs ``channel``) posts with
    ``chat.postMessage``; anything else is treated as an Incoming Webhook (``slackwebhook``).
    User-controlled text goes out as ``plain_text`` only (see :mod:`finops_provider.core.alerts`).

    :param slack_conn_id: connection id (default ``slack_default``).
    :param channel: channel for the API transport (``#finops``); ignored by webhooks.
    :param timeout: seconds per request.
    """

    template_fields = ("slack_conn_id", "channel")

    def __init__(
        self,
        *,
        slack_conn_id: str = "slack_default",
        channel: str | None = None,
        timeout: int = 10,
        payload: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(payload=payload)
        self.slack_conn_id = slack_conn_id
        self.channel = channel
        self.timeout = timeout

    def send_payload(self, payload: dict[str, Any]) -> str | None:
        from airflow.sdk.bases.hook import BaseHook

        body = render_slack(payload)
        conn_type = BaseHook.get_connection(self.slack_conn_id).conn_type
        if conn_type == "slack":
            from airflow.providers.slack.hooks.slack import SlackHook

            channel = self.channel or (payload.get("route") or {}).get("slack_channel")
            if not channel:
                raise ValueError(f"connection {self.slack_conn_id} is a Slack API connection: give channel=")
            resp = SlackHook(slack_conn_id=self.slack_conn_id, timeout=self.timeout).call(
                "chat.postMessage", json={"channel": channel, **body}
            )
            return str(resp.get("ts") or "")
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        SlackWebhookHook(slack_webhook_conn_id=self.slack_conn_id, timeout=self.timeout).send_dict(body)
        return None
