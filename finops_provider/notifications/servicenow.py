"""ServiceNow notifier: an incident through the Table API (``POST /api/now/table/incident``) with the
official http provider's ``HttpHook`` (basic auth from the connection)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from finops_provider.core.alerts import render_servicenow
from finops_provider.notifications.base import FinOpsNotifier


class FinOpsServiceNowNotifier(FinOpsNotifier):
    """Open a ServiceNow incident for a FinOps alert.

    Idempotent across crashes: ``correlation_id`` is a hash of the breach key, and an existing incident with
    it is reused.

    :param servicenow_conn_id: an ``http`` connection: host = instance URL, login / password.
    """

    template_fields = ("servicenow_conn_id",)

    def __init__(
        self, *, servicenow_conn_id: str = "servicenow_default", payload: dict[str, Any] | None = None
    ) -> None:
        super().__init__(payload=payload)
        self.servicenow_conn_id = servicenow_conn_id

    def _hook(self, method: str) -> Any:
        from airflow.providers.http.hooks.http import HttpHook

        return HttpHook(method=method, http_conn_id=self.servicenow_conn_id)

    def send_payload(self, payload: dict[str, Any]) -> str | None:
        body = render_servicenow(payload)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        query = f"correlation_id={body['correlation_id']}"
        found = self._hook("GET").run(
            f"api/now/table/incident?sysparm_limit=1&sysparm_fields=sys_id,number&sysparm_query={quote(query)}",
            headers=headers,
            extra_options={"timeout": 10},
        )
        existing = found.json().get("result") or []
        if existing:
            return str(existing[0].get("number") or existing[0].get("sys_id"))
        resp = self._hook("POST").run(
            "api/now/table/incident", data=json.dumps(body), headers=headers, extra_options={"timeout": 10}
        )
        result = resp.json().get("result") or {}
        return str(result.get("number") or result.get("sys_id") or "")
