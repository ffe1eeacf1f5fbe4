"""The FinOps Airflow plugins (entry point group ``airflow.plugins``): the attribution listener and the
dashboard (a FastAPI app mounted at ``/finops`` on the api-server, plus a "FinOps" entry in the UI's nav).

This module is imported by every Airflow process that loads plugins (task processes included), so it stays
light: the dashboard's FastAPI app is built on its first request (:class:`LazyDashboardApp`).
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

from finops_provider.plugins import listener

#: where the dashboard is mounted (not one of Airflow's reserved prefixes: /api/v2, /ui, /execution, /auth, /pluginsv2)
URL_PREFIX = "/finops"


class FinOpsListenerPlugin(AirflowPlugin):
    """Records a cost estimate for every task try when ``[finops] listener_enabled`` is true."""

    name = "finops_listener"
    listeners = [listener]  # noqa: RUF012 (AirflowPlugin declares these as class attributes)


class LazyDashboardApp:
    """ASGI app that builds :func:`finops_provider.plugins.dashboard.create_app` on first use (keeps FastAPI,
    plotly and the ledger out of processes that only load the plugin)."""

    def __init__(self) -> None:
        self._app: Any = None

    @property
    def app(self) -> Any:
        if self._app is None:
            from finops_provider.plugins.dashboard import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class FinOpsDashboardPlugin(AirflowPlugin):
    """The FinOps dashboard in the Airflow UI: executive summary with charts, budgets with drill-down to tasks,
    the live feed, DAGs paused by FinOps; JSON API documented at ``/finops/docs``. Every route authenticates
    with Airflow's auth manager (JWT bearer token or the UI's ``_token`` cookie) and needs DAG read access."""

    name = "finops_dashboard"
    fastapi_apps = [{"app": LazyDashboardApp(), "url_prefix": URL_PREFIX, "name": "FinOps dashboard"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "FinOps",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "finops",
        }
    ]
