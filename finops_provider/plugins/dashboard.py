"""The FinOps dashboard: a read-only FastAPI app mounted on the Airflow api-server (see ``finops_plugin.py``).

Routes (all GET, all authenticated and authorized through Airflow's auth manager, documented at
``/finops/docs`` and ``/finops/openapi.json``):

* ``/finops/`` — the executive summary page with charts, budgets, live feed and paused DAGs;
* ``/finops/api/summary`` — the executive summary JSON (``reports/SCHEMA.md``);
* ``/finops/api/budgets`` and ``/finops/api/budgets/{name}/tasks`` — budget status and its top tasks;
* ``/finops/api/dags/{dag_id}/tasks`` — a DAG's cost per task in the period;
* ``/finops/api/feed`` — breaches and anomalies of the live stream (poll with ``after_id``);
* ``/finops/api/paused`` — DAGs FinOps paused, with the reason.

Auth: the plugin mount is open by default on the api-server, so every route depends on :func:`require_reader`:
Airflow's own ``get_user`` (``Authorization: Bearer <JWT from POST /auth/token>`` or the UI's ``_token``
cookie; missing or expired → 401, invalid → 403), then ``is_authorized_dag(method="GET")`` (a user the auth
manager does not let read DAGs → 403). Everything is escaped on output (Jinja2 autoescape, ``textContent``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

# This module is imported only by the api-server, on the dashboard's first request (finops_plugin.LazyDashboardApp):
# FastAPI resolves route annotations from module globals, so its imports live here, not inside functions.
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Query, Request, status  # noqa: TID253
from fastapi.openapi.docs import get_swagger_ui_html  # noqa: TID253
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: TID253

from finops_provider.core.money import Money

PERIODS = ("day", "week", "month")
FEED_POLL_S = 10
SUMMARY_TTL_S = 30.0


def require_reader(user: GetUserDep) -> BaseUser:
    """The Airflow user of this request, if the auth manager lets them read DAGs.

    Authentication is Airflow's own ``get_user`` (bearer JWT, else the UI's ``_token`` cookie): 401 without a
    credential or with an expired one, 403 with an invalid token; then 403 when ``is_authorized_dag(GET)`` says no.
    """
    if not get_auth_manager().is_authorized_dag(method="GET", user=user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: the FinOps dashboard needs DAG read access")
    return user


PeriodQ = Annotated[str, Query(pattern="^(day|week|month)$", description="day, week or month")]
AtQ = Annotated[dt.date | None, Query(description="a date inside the period (default: now, UTC)")]


def _now(at: dt.date | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.UTC)
    return dt.datetime(at.year, at.month, at.day, 23, 59, tzinfo=dt.UTC)


class _State:
    """Ledger, config and a short-lived summary cache, shared by the app's requests."""

    def __init__(self, ledger_url: str | None, config_path: str | None) -> None:
        self.ledger_url = ledger_url
        self.config_path = config_path
        self._ledger: Any = None
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str | None], tuple[float, dict[str, Any]]] = {}

    def config(self) -> Any:
        from finops_provider.settings import get_config

        return get_config(self.config_path)

    def ledger(self) -> Any:
        if self._ledger is None:
            from finops_provider.settings import get_ledger

            self._ledger = get_ledger(self.ledger_url, self.config())
        return self._ledger

    def summary(self, period: str, at: dt.date | None) -> dict[str, Any]:
        key = (period, at.isoformat() if at else None)
        with self._lock:
            hit = self._cache.get(key)
            if hit and time.monotonic() - hit[0] < SUMMARY_TTL_S:
                return hit[1]
            from finops_provider.core.summary import build_summary

            s = build_summary(self.ledger(), self.config(), now=_now(at), period=period)
            self._cache[key] = (time.monotonic(), s)
            return s


def feed_text(item: dict[str, Any]) -> str:
    """One line for a live-feed item (plain text: the page sets it with ``textContent``)."""
    p = item.get("payload") or {}
    if item["kind"] == "breach":
        cur = (p.get("budget_amount") or {}).get("currency", "")
        amt = (p.get("budget_amount") or {}).get("amount", "0")
        return (
            f"budget {p.get('budget')} crossed {p.get('threshold_pct')} % ({p.get('basis')}): "
            f"{p.get('utilisation_pct')} % of {Money.of(amt, cur).format() if cur else amt}"
        )
    if item["kind"] == "anomaly":
        scope = ", ".join(f"{k}={v}" for k, v in (p.get("scope") or {}).items())
        impact = p.get("impact") or {}
        imp = Money.of(impact["amount"], impact["currency"]).format() if impact.get("currency") else "?"
        return f"anomaly {p.get('severity', '')} {scope}: +{imp}"
    return str(item["kind"])


def create_app(*, ledger_url: str | None = None, config_path: str | None = None) -> FastAPI:
    """Build the dashboard app (the plugin builds it lazily with the configured ledger and config)."""
    from finops_provider import __version__

    state = _State(ledger_url, config_path)
    app = FastAPI(
        title="FinOps dashboard",
        version=__version__,
        description=(
            "Read-only FinOps API behind the dashboard page. Authenticate like the Airflow REST API: "
            "`Authorization: Bearer <token>` from `POST /auth/token`, or the Airflow UI session cookie. "
            "Money is always an exact decimal string with its currency; currencies are never added together."
        ),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_reader)],
    )

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="FinOps dashboard API")

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_bundle() -> Response:
        from finops_provider.reports.html import plotly_js

        return Response(
            plotly_js(),
            media_type="application/javascript",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    @app.get("/", response_class=HTMLResponse, summary="Dashboard page")
    def page(request: Request, period: PeriodQ = "month", at: AtQ = None) -> HTMLResponse:
        """The executive summary with charts, budgets (drill-down links), live feed and paused DAGs."""
        from finops_provider.reports.html import render_html
        from finops_provider.streaming.feed import read_feed

        root = request.scope.get("root_path", "")
        summary = state.summary(period, at)
        feed = _latest_feed(read_feed, state.ledger())
        html = render_html(
            summary,
            plotly_src=f"{root}/static/plotly.min.js",
            title="FinOps dashboard",
            dashboard={
                "prefix": root,
                "feed": [dict(f, text=feed_text(f)) for f in reversed(feed)],
                "after_id": max((f["id"] for f in feed), default=0),
                "poll_s": FEED_POLL_S,
            },
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/api/summary", summary="Executive summary (JSON schema version 1)")
    def api_summary(period: PeriodQ = "month", at: AtQ = None) -> dict[str, Any]:
        """The executive summary of the period containing ``at``: totals and trend, breakdowns, top movers,
        budgets with burn-down and breach ETA, breaches, actions taken, anomalies, idle / unallocated share,
        estimate accuracy. Schema: ``finops_provider/reports/SCHEMA.md``."""
        return state.summary(period, at)

    @app.get("/api/budgets", summary="Budget status with burn-down and breach ETA")
    def api_budgets(at: AtQ = None) -> dict[str, Any]:
        """Every budget's status in its current period (``budgets``) and the daily burn-down of calendar budgets
        (``budget_burndown``), with the ETA sentence."""
        s = state.summary("month", at)
        return {"generated_at": s["generated_at"], "budgets": s["budgets"], "budget_burndown": s["budget_burndown"]}

    @app.get("/api/budgets/{name}/tasks", summary="Drill-down: top tasks in a budget's scope and period")
    def api_budget_tasks(name: str, at: AtQ = None, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
        """The most expensive ``dag.task`` pairs counted by budget ``name`` in its current period."""
        from finops_provider.core.budgets import BudgetEngine
        from finops_provider.core.enforcement import top_tasks

        cfg = state.config()
        budget = next((b for b in cfg.budgets if b.name == name), None)
        if budget is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such budget")
        if budget.period == "run":
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "run budgets have no calendar period to drill into")
        (st,) = BudgetEngine(cfg, state.ledger()).evaluate_all(_now(at), names=[name])
        return {
            "budget": name,
            "period_start": st.period_start.isoformat(),
            "period_end": st.period_end.isoformat(),
            "actual": st.actual.to_json(),
            "tasks": top_tasks(state.ledger(), budget, st, limit=limit),
        }

    @app.get("/api/dags/{dag_id}/tasks", summary="A DAG's cost per task in the period")
    def api_dag_tasks(dag_id: str, period: PeriodQ = "month", at: AtQ = None) -> dict[str, Any]:
        """Cost of each task of ``dag_id`` in the period (billed basis, per currency; sums to the DAG's total)."""
        from finops_provider.core.aggregation import aggregate_ledger
        from finops_provider.core.budgets import period_bounds

        start, end = period_bounds(period, _now(at))
        agg = aggregate_ledger(state.ledger(), ["task"], start=start, end=end, dag_id=dag_id)
        return {
            "dag_id": dag_id,
            "period": {"kind": period, "start": start.isoformat(), "end": end.isoformat()},
            "totals": agg.total().to_json(),
            "tasks": [
                {"task": g.keys[0], "currency": g.currency, "amount": str(g.amount), "rows": g.rows}
                for g in sorted(agg.groups, key=lambda g: (g.currency, -g.amount, g.keys))
            ],
        }

    @app.get("/api/feed", summary="Live feed: breaches and anomalies as they happen")
    def api_feed(
        after_id: Annotated[int, Query(ge=0)] = 0,
        kind: Annotated[list[str] | None, Query(description="breach and/or anomaly")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        """Feed items with id > ``after_id`` in id order; poll with the last id seen."""
        from finops_provider.streaming.feed import read_feed

        items = read_feed(state.ledger(), after_id=after_id, kinds=kind, limit=limit)
        return {
            "items": [dict(i, text=feed_text(i)) for i in items],
            "last_id": max([after_id, *(i["id"] for i in items)]),
        }

    @app.get("/api/paused", summary="DAGs paused by FinOps, with the reason")
    def api_paused() -> dict[str, Any]:
        """DAGs whose latest FinOps pause / unpause event is a pause: when, by which budget, why."""
        from finops_provider.core.summary import paused_dags

        return {"paused": paused_dags(state.ledger())}

    return app


def _latest_feed(read_feed: Callable[..., list[dict[str, Any]]], ledger: Any, n: int = 50) -> list[dict[str, Any]]:
    """The newest ``n`` feed items (the feed reader pages forward by id)."""
    items: list[dict[str, Any]] = []
    after = 0
    while True:
        page = read_feed(ledger, after_id=after, limit=500)
        if not page:
            return items[-n:]
        items = (items + page)[-n:]
        after = page[-1]["id"]
