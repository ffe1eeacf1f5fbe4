"""Jira notifier: one issue per budget breach (budget, spend, forecast, top tasks, link to the DAG),
through the official atlassian-jira provider's ``JiraHook``."""

from __future__ import annotations

from typing import Any

from finops_provider.core.alerts import alert_id, render_jira
from finops_provider.notifications.base import FinOpsNotifier


class FinOpsJiraNotifier(FinOpsNotifier):
    """Create a Jira issue for a FinOps alert.

    Idempotent across crashes: the issue carries the label ``finops-<hash of the breach key>`` and an
    existing issue with that label is reused instead of creating a second one.

    :param jira_conn_id: connection id (type ``jira``; host = the Jira base URL).
    :param project_key: project key; default: the route's (team's) project, else ``FINOPS``.
    :param issue_type: issue type name.
    """

    template_fields = ("jira_conn_id", "project_key", "issue_type")

    def __init__(
        self,
        *,
        jira_conn_id: str = "jira_default",
        project_key: str | None = None,
        issue_type: str = "Task",
        payload: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(payload=payload)
        self.jira_conn_id = jira_conn_id
        self.project_key = project_key
        self.issue_type = issue_type

    def send_payload(self, payload: dict[str, Any]) -> str | None:
        from airflow.providers.atlassian.jira.hooks.jira import JiraHook

        client = JiraHook(jira_conn_id=self.jira_conn_id).get_conn()
        label = alert_id((payload.get("breach") or {}).get("dedupe_key", ""))
        if payload.get("breach"):
            found = client.jql(f'labels = "{label}"', fields="key", limit=1) or {}
            issues = found.get("issues") or []
            if issues:
                return str(issues[0]["key"])
        project = self.project_key or (payload.get("route") or {}).get("jira_project") or "FINOPS"
        created = client.create_issue(fields=render_jira(payload, project, self.issue_type))
        return str((created or {}).get("key") or "")
