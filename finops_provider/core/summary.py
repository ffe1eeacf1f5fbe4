"""Executive summary data, rendered as Markdown and JSON (stable schema, money as exact strings).

The data is built from the ledger once; renderers only format it (rounding HALF_EVEN for display): Markdown
and JSON here, the self-contained HTML report in :mod:`finops_provider.reports.html`, the Slack digest in
:mod:`finops_provider.reports.digest`. The JSON schema is documented in ``finops_provider/reports/SCHEMA.md``;
schema version 1 only ever gains keys.

Conservation: every money figure is an exact sum of ledger rows of the period (per currency, never across
currencies), so the totals, each breakdown (top N + ``(other)``), the daily series and the idle / unallocated
amounts all reconcile with :meth:`Ledger.totals` to the last digit.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from finops_provider.core.aggregation import aggregate_ledger
from finops_provider.core.anomaly import Anomaly, detector_from_config
from finops_provider.core.budgets import BudgetEngine, BudgetStatus, pct, period_bounds
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.money import MONEY_CONTEXT, Money
from finops_provider.core.records import UNALLOCATED

SCHEMA_VERSION = "1"
OTHER = "(other)"
BREAKDOWNS = {
    "platform": "Platform",
    "team": "Team",
    "cost_center": "Cost center",
    "dag": "Job (DAG)",
    "task": "Task",
    "service": "Service",
    "asset": "Table (asset)",
}


def _top(
    ledger: Any, dim: str, start: dt.datetime, end: dt.datetime, totals: dict[str, Decimal], n: int
) -> list[dict[str, Any]]:
    """The top ``n`` groups per currency plus one ``(other)`` row with the rest: each currency's rows sum to
    its total exactly."""
    agg = aggregate_ledger(ledger, [dim], start=start, end=end)
    rows: list[dict[str, Any]] = []

    def row(key: str, cur: str, amount: Decimal, count: int) -> dict[str, Any]:
        share = pct(amount, totals.get(cur, Decimal(0)))
        return {"key": key, "currency": cur, "amount": str(amount), "rows": count, "share_pct": str(share)}

    for cur in sorted({g.currency for g in agg.groups}, key=lambda c: (-totals.get(c, Decimal(0)), c)):
        groups = agg.top(len(agg.groups), cur)
        rows += [row(g.keys[0], cur, g.amount, g.rows) for g in groups[:n]]
        rest = groups[n:]
        if rest:
            rows.append(row(OTHER, cur, sum((g.amount for g in rest), Decimal(0)), sum(g.rows for g in rest)))
    return rows


IDLE_JOB = "(idle)"  # the idle-capacity convention of the Kubernetes, Snowflake and Fabric hooks (and the demo)
MOVER_DIMS = ("team", "dag")
_PERIOD_ADJ = {"day": "daily", "week": "weekly", "month": "monthly", "run": "per-run"}


def _sum(values: Any) -> Decimal:
    with localcontext(MONEY_CONTEXT):
        return sum(values, Decimal(0))


def _movers(
    ledger: Any, dim: str, cur: tuple[dt.datetime, dt.datetime], prev: tuple[dt.datetime, dt.datetime], n: int
) -> list[dict[str, Any]]:
    """Biggest changes of one dimension's groups, this period vs the previous period over the same elapsed time
    (like for like), per currency; sorted by absolute change, increases first on ties."""
    now_agg = {
        (g.keys[0], g.currency): g.amount for g in aggregate_ledger(ledger, [dim], start=cur[0], end=cur[1]).groups
    }
    prev_agg = {
        (g.keys[0], g.currency): g.amount for g in aggregate_ledger(ledger, [dim], start=prev[0], end=prev[1]).groups
    }
    rows = []
    for key, currency in sorted(set(now_agg) | set(prev_agg)):
        a = now_agg.get((key, currency), Decimal(0))
        b = prev_agg.get((key, currency), Decimal(0))
        with localcontext(MONEY_CONTEXT):
            change = a - b
        if change == 0:
            continue
        rows.append(
            {
                "dimension": dim,
                "key": key,
                "currency": currency,
                "current": str(a),
                "previous": str(b),
                "change": str(change),
                "change_pct": str(pct(change, b)) if b else None,
            }
        )
    rows.sort(key=lambda r: (-abs(Decimal(str(r["change"]))), -Decimal(str(r["change"])), r["key"], r["currency"]))
    return rows[:n]


def _daily(ledger: Any, start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
    """Spend per UTC day and platform, per currency (the charts' series; sums to the totals exactly)."""
    agg = aggregate_ledger(ledger, ["day", "platform"], start=start, end=end)
    return [
        {"day": g.keys[0], "platform": g.keys[1], "currency": g.currency, "amount": str(g.amount)}
        for g in sorted(agg.groups, key=lambda g: (g.keys[0], g.currency, g.keys[1]))
    ]


def _idle(ledger: Any, start: dt.datetime, end: dt.datetime, totals: dict[str, Decimal]) -> dict[str, Any]:
    """Idle capacity (rows with ``x_job_id == "(idle)"``) per currency with its share and per-platform split."""
    agg = aggregate_ledger(ledger, ["platform"], start=start, end=end, job_id=IDLE_JOB)
    out: dict[str, Any] = {}
    for currency in sorted({g.currency for g in agg.groups}):
        gs = agg.top(len(agg.groups), currency)
        amount = _sum(g.amount for g in gs)
        out[currency] = {
            "amount": str(amount),
            "share_pct": str(pct(amount, totals.get(currency, Decimal(0)))),
            "by_platform": [{"key": g.keys[0], "amount": str(g.amount), "rows": g.rows} for g in gs],
        }
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dt.datetime):
        return (v if v.tzinfo else v.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(v, Decimal):
        return str(v)
    return v


def actions_taken(ledger: Any, start: dt.datetime, end: dt.datetime, limit: int = 200) -> list[dict[str, Any]]:
    """What enforcement did in ``[start, end)``: pauses / approvals (``finops_enforcement_event``) and the
    alerts, tickets and incidents of the outbox with their delivery status and reference (ticket key)."""
    from finops_provider.core.schema import enforcement_event, outbox

    out: list[dict[str, Any]] = []
    with ledger.engine.connect() as conn:
        q = (
            sa.select(enforcement_event)
            .where(enforcement_event.c.at >= start, enforcement_event.c.at < end)
            .order_by(enforcement_event.c.id)
            .limit(limit)
        )
        for m in conn.execute(q).mappings():
            detail = json.loads(m["detail"]) if m["detail"] else {}
            budget = ((detail or {}).get("breach") or {}).get("budget")
            out.append(
                {
                    "at": _jsonable(m["at"]),
                    "source": "enforcement",
                    "kind": m["kind"],
                    "dag_id": m["dag_id"],
                    "run_id": m["run_id"],
                    "task_id": m["task_id"],
                    "budget": budget,
                    "actor": m["actor"],
                    "reason": m["reason"],
                    "status": "done",
                    "reference": None,
                }
            )
        q = (
            sa.select(outbox)
            .where(outbox.c.created_at >= start, outbox.c.created_at < end)
            .where(outbox.c.kind != "slack_digest")  # the summary's own digests are reports, not actions
            .order_by(outbox.c.id)
            .limit(limit)
        )
        for m in conn.execute(q).mappings():
            payload = json.loads(m["payload"]) if m["payload"] else {}
            out.append(
                {
                    "at": _jsonable(m["created_at"]),
                    "source": "outbox",
                    "kind": m["kind"],
                    "dag_id": payload.get("pause_dag_id") or payload.get("dag_id"),
                    "run_id": payload.get("run_id"),
                    "task_id": payload.get("task_id"),
                    "budget": (payload.get("breach") or {}).get("budget"),
                    "actor": "finops",
                    "reason": payload.get("kind"),
                    "status": m["status"],
                    "reference": m["result"],
                }
            )
    out.sort(key=lambda a: (a["at"], a["source"], a["kind"]))
    return out


def paused_dags(ledger: Any) -> list[dict[str, Any]]:
    """DAGs FinOps paused and has not seen unpaused since: the latest pause / unpause event per DAG is a pause.

    Each entry has the DAG, when, who (``finops:budget=<name>``), the reason and the breach that caused it.
    """
    from finops_provider.core.schema import enforcement_event

    latest: dict[str, Any] = {}
    q = (
        sa.select(enforcement_event)
        .where(enforcement_event.c.kind.in_(["pause", "unpause"]), enforcement_event.c.dag_id.is_not(None))
        .order_by(enforcement_event.c.id)
    )
    with ledger.engine.connect() as conn:
        for m in conn.execute(q).mappings():
            latest[m["dag_id"]] = dict(m)
    out = []
    for dag_id, m in sorted(latest.items()):
        if m["kind"] != "pause":
            continue
        detail = json.loads(m["detail"]) if m["detail"] else {}
        br = (detail or {}).get("breach") or {}
        out.append(
            {
                "dag_id": dag_id,
                "at": _jsonable(m["at"]),
                "actor": m["actor"],
                "reason": m["reason"],
                "mode": (detail or {}).get("mode"),
                "run_id": m["run_id"],
                "task_id": m["task_id"],
                "budget": br.get("budget"),
                "actual": br.get("actual"),
                "budget_amount": br.get("budget_amount"),
                "utilisation_pct": br.get("utilisation_pct"),
            }
        )
    return out


def estimate_accuracy(ledger: Any, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    """Per platform and currency: how far run-time estimates of ``[start, end)`` were from billed truth
    (bias and mean absolute error, from the reconciliation table), plus estimate rows still pending truth."""
    from finops_provider.core.reconcile import TaskReconciliation, accuracy
    from finops_provider.core.schema import estimate_reconciliation as er

    tasks: dict[tuple[str, str, str, str, str], TaskReconciliation] = {}
    q = sa.select(er).where(er.c.charge_period_start >= start, er.c.charge_period_start < end).order_by(er.c.id)
    with ledger.engine.connect() as conn:
        for m in conn.execute(q).mappings():
            k = (m["dag_id"], m["task_id"], m["run_id"], m["platform"], m["billing_currency"])
            if k in tasks:
                continue
            cur = m["billing_currency"]
            tasks[k] = TaskReconciliation(
                dag_id=m["dag_id"],
                task_id=m["task_id"],
                run_id=m["run_id"],
                platform=m["platform"],
                estimate=Money(m["task_estimate"], cur),
                truth=None if m["truth"] is None else Money(m["truth"], cur),
                error_pct=m["error_pct"],
                estimate_rows=0,
                truth_rows=m["truth_rows"],
            )
    pending: dict[str, int] = defaultdict(int)
    for (platform,) in ledger.rows(["x_platform"], start=start, end=end, cost_kind="estimate"):
        pending[platform or UNALLOCATED] += 1
    return {
        "platforms": [a.to_json() for a in accuracy(list(tasks.values())).values()],
        "reconciled_tasks": len(tasks),
        "pending_estimate_rows": dict(sorted(pending.items())),
    }


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def scope_text(scope: dict[str, Any]) -> str:
    """``{"team": "data-eng"}`` -> ``team data-eng``; tags as ``tag k=v``; empty -> ``everything``."""
    parts = []
    for k, v in scope.items():
        if k == "tag" and isinstance(v, dict):
            parts += [f"tag {tk}={tv}" for tk, tv in v.items()]
        else:
            parts.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(parts) or "everything"


def breach_eta_text(budget: dict[str, Any]) -> str:
    """One sentence for a budget status (``BudgetStatus.to_json``): over budget, the breach date at this burn
    rate ("team data-eng breaches its monthly budget on the 19th (2026-10-19) at this burn rate"), or on track."""
    who = scope_text(budget.get("scope") or {})
    adj = _PERIOD_ADJ.get(budget["period"], budget["period"])
    cur = budget["amount"]["currency"]
    used = Decimal(budget["utilisation_pct"])
    if used >= 100:
        return (
            f"{who} is over its {adj} budget {budget['budget']}: {fmt_money(budget['actual']['amount'], cur)} of "
            f"{fmt_money(budget['amount']['amount'], cur)} ({used} %)"
        )
    if budget.get("breach_eta"):
        eta = dt.datetime.fromisoformat(budget["breach_eta"])
        model = (
            "at this burn rate" if budget.get("forecast_model", "linear") == "linear" else "on the seasonal forecast"
        )
        return (
            f"{who} breaches its {adj} budget {budget['budget']} on the {_ordinal(eta.day)} "
            f"({eta.date().isoformat()}) {model}"
        )
    return f"{who} is on track: forecast {budget['forecast_pct']} % of its {adj} budget {budget['budget']}"


def _burndown(ledger: Any, statuses: list[BudgetStatus], now: dt.datetime) -> list[dict[str, Any]]:
    """Per calendar budget: cumulative spend per day of its period (in its currency and basis); the last point
    equals the status's actual spend exactly."""
    from finops_provider.core.budgets import scope_daily

    out = []
    for st in statuses:
        if st.budget.period == "run":
            continue
        daily = scope_daily(ledger, st.budget, st.period_start, st.period_end)
        acc = Decimal(0)
        series = []
        for day in sorted(daily):
            with localcontext(MONEY_CONTEXT):
                acc += daily[day]
            series.append({"day": day.isoformat(), "cumulative": str(acc)})
        js = st.to_json(now)
        out.append(
            {
                "budget": st.budget.name,
                "scope": st.budget.scope,
                "period": st.budget.period,
                "period_start": js["period_start"],
                "period_end": js["period_end"],
                "amount": js["amount"],
                "actual": js["actual"],
                "forecast": js["forecast"],
                "forecast_model": js["forecast_model"],
                "utilisation_pct": js["utilisation_pct"],
                "forecast_pct": js["forecast_pct"],
                "breach_eta": js["breach_eta"],
                "eta_text": breach_eta_text(js),
                "series": series,
            }
        )
    return out


def build_summary(
    ledger: Any,
    config: FinOpsConfig,
    *,
    now: dt.datetime,
    period: str = "month",
    top_n: int = 10,
    statuses: list[BudgetStatus] | None = None,
    anomalies: list[Anomaly] | None = None,
) -> dict[str, Any]:
    """Build the executive summary for the period containing ``now`` (schema: ``reports/SCHEMA.md``)."""
    start, end = period_bounds(period, now)
    prev_start, _ = period_bounds(period, start - dt.timedelta(seconds=1))
    billed = ledger.totals("billed", start=start, end=end)
    effective = ledger.totals("effective", start=start, end=end)
    previous = ledger.totals("billed", start=prev_start, end=start)
    # like for like: the previous period up to the same elapsed time as this one
    prev_to_date_end = min(prev_start + (min(now, end) - start), start)
    previous_to_date = ledger.totals("billed", start=prev_start, end=prev_to_date_end)
    totals = {m.currency: m.amount for m in billed.items()}
    if statuses is None:
        statuses = BudgetEngine(config, ledger).evaluate_all(now)
    if anomalies is None:
        anomalies = detector_from_config(config.anomaly).scan(ledger, (now - dt.timedelta(days=1)).date())
    unalloc = {}
    for g in aggregate_ledger(ledger, ["team"], start=start, end=end).groups:
        if g.keys[0] == UNALLOCATED:
            unalloc[g.currency] = g.amount
    trend = {}
    for cur, amt in totals.items():
        prev = previous.get(cur).amount
        ptd = previous_to_date.get(cur).amount
        trend[cur] = {
            "previous": str(prev),
            "change_pct": str(pct(amt - prev, prev)) if prev else None,
            "previous_to_date": str(ptd),
            "change_to_date_pct": str(pct(amt - ptd, ptd)) if ptd else None,
        }
    budgets = [s.to_json(now) for s in statuses]
    for b in budgets:
        b["eta_text"] = breach_eta_text(b)
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": now.isoformat(),
        "period": {"kind": period, "start": start.isoformat(), "end": end.isoformat()},
        "totals": {"billed": billed.to_json(), "effective": effective.to_json()},
        "trend": trend,
        "rows": ledger.count(start=start, end=end),
        "breakdowns": {dim: _top(ledger, dim, start, end, totals, top_n) for dim in BREAKDOWNS},
        "unallocated": {
            cur: {"amount": str(a), "share_pct": str(pct(a, totals.get(cur, Decimal(0))))} for cur, a in unalloc.items()
        },
        "budgets": budgets,
        "breaches": [b.to_json() for s in statuses for b in s.breaches],
        "anomalies": [a.to_json() for a in anomalies],
        "top_movers": {
            dim: _movers(ledger, dim, (start, end), (prev_start, prev_to_date_end), top_n) for dim in MOVER_DIMS
        },
        "daily": _daily(ledger, start, end),
        "idle": _idle(ledger, start, end, totals),
        "budget_burndown": _burndown(ledger, statuses, now),
        "actions": actions_taken(ledger, start, end),
        "paused_dags": paused_dags(ledger),
        "estimate_accuracy": estimate_accuracy(ledger, start, end),
    }


def render_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False, ensure_ascii=False)


def fmt_money(amount: str | Decimal, currency: str) -> str:
    return Money.of(amount, currency).format()


def _md_escape(text: Any) -> str:
    s = str(text)
    for ch in ("\\", "|", "*", "_", "`", "[", "]", "<", ">"):
        s = s.replace(ch, "\\" + ch)
    return s.replace("\n", " ")


def render_markdown(summary: dict[str, Any]) -> str:
    """Executive summary as Markdown (user-controlled names are escaped)."""
    p = summary["period"]
    lines = [f"# FinOps executive summary — {p['kind']} from {p['start'][:10]} to {p['end'][:10]}", ""]
    lines.append(f"Generated {summary['generated_at']} · {summary['rows']:,} cost rows")
    lines.append("")
    lines.append("## Total spend")
    lines.append("")
    lines.append("| Currency | Billed | Effective | Previous period | Change |")
    lines.append("|---|---:|---:|---:|---:|")
    for cur, amt in summary["totals"]["billed"].items():
        eff = summary["totals"]["effective"].get(cur, "0")
        tr = summary["trend"].get(cur, {})
        chg = f"{tr['change_pct']} %" if tr.get("change_pct") is not None else "n/a"
        lines.append(
            f"| {cur} | {fmt_money(amt, cur)} | {fmt_money(eff, cur)} | "
            f"{fmt_money(tr.get('previous', '0'), cur)} | {chg} |"
        )
    for cur, u in summary["unallocated"].items():
        lines.append("")
        lines.append(
            f"Unallocated (no owning team): {fmt_money(u['amount'], cur)} = {u['share_pct']} % of {cur} spend."
        )
    for dim, title in BREAKDOWNS.items():
        rows = summary["breakdowns"].get(dim) or []
        if not rows:
            continue
        lines += ["", f"## Top by {title.lower()}", "", f"| {title} | Cost | Share |", "|---|---:|---:|"]
        for r in rows:
            lines.append(f"| {_md_escape(r['key'])} | {fmt_money(r['amount'], r['currency'])} | {r['share_pct']} % |")
    if summary["budgets"]:
        lines += [
            "",
            "## Budgets",
            "",
            "| Budget | Period | Spent | Budget | Used | Forecast | Breach ETA |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for b in summary["budgets"]:
            cur = b["amount"]["currency"]
            lines.append(
                f"| {_md_escape(b['budget'])} | {b['period']} | {fmt_money(b['actual']['amount'], cur)} | "
                f"{fmt_money(b['amount']['amount'], cur)} | {b['utilisation_pct']} % | {b['forecast_pct']} % | "
                f"{(b['breach_eta'] or '—')[:16]} |"
            )
    lines += ["", "## Breaches", ""]
    if summary["breaches"]:
        for br in summary["breaches"]:
            cur = br["budget_amount"]["currency"]
            lines.append(
                f"- **{_md_escape(br['budget'])}** crossed {br['threshold_pct']} % ({br['basis']}): "
                f"{br['utilisation_pct']} % of {fmt_money(br['budget_amount']['amount'], cur)} "
                f"→ {', '.join(br['actions'])}"
            )
    else:
        lines.append("None.")
    lines += ["", "## Anomalies", ""]
    if summary["anomalies"]:
        for a in summary["anomalies"]:
            scope = ", ".join(f"{k}={_md_escape(v)}" for k, v in a["scope"].items())
            cur = a["actual"]["currency"]
            rc = a["root_cause"]
            why = (
                f"; driver: {rc['dimension']} {_md_escape(rc['value'])} (+{fmt_money(rc['impact']['amount'], cur)})"
                if rc
                else ""
            )
            lines.append(
                f"- {a['severity'].upper()} {scope} on {a['window_start'][:10]}: "
                f"{fmt_money(a['actual']['amount'], cur)} vs "
                f"expected {fmt_money(a['expected']['amount'], cur)} (+{fmt_money(a['impact']['amount'], cur)}, "
                f"{a['score_pct']} % of baseline){why}"
            )
    else:
        lines.append("None.")
    lines += _markdown_extras(summary)
    lines.append("")
    return "\n".join(lines)


def _markdown_extras(summary: dict[str, Any]) -> list[str]:
    """The sections schema 1 gained with issue 7 (movers, burn-down, idle, actions, paused DAGs, accuracy)."""
    lines: list[str] = []
    burndown = summary.get("budget_burndown") or []
    if burndown:
        lines += ["", "## Budget burn-down", ""]
        lines += [f"- {_md_escape(b['eta_text'])}" for b in burndown]
    for dim, movers in (summary.get("top_movers") or {}).items():
        if not movers:
            continue
        title = BREAKDOWNS.get(dim, dim)
        lines += [
            "",
            f"## Top movers by {title.lower()}",
            "",
            f"| {title} | Now | Before | Change |",
            "|---|---:|---:|---:|",
        ]
        for m in movers:
            cur = m["currency"]
            chg = f" ({m['change_pct']} %)" if m["change_pct"] is not None else ""
            sign = "+" if Decimal(m["change"]) > 0 else ""
            lines.append(
                f"| {_md_escape(m['key'])} | {fmt_money(m['current'], cur)} | {fmt_money(m['previous'], cur)} | "
                f"{sign}{fmt_money(m['change'], cur)}{chg} |"
            )
    idle = summary.get("idle") or {}
    if idle:
        lines += ["", "## Idle capacity", ""]
        for cur, i in idle.items():
            parts = ", ".join(f"{_md_escape(p['key'])} {fmt_money(p['amount'], cur)}" for p in i["by_platform"])
            lines.append(f"- {fmt_money(i['amount'], cur)} = {i['share_pct']} % of {cur} spend ({parts})")
    lines += ["", "## Actions taken", ""]
    actions = summary.get("actions") or []
    if actions:
        for a in actions:
            ref = f" [{_md_escape(a['reference'])}]" if a.get("reference") else ""
            lines.append(
                f"- {a['at'][:16]} {_md_escape(a['kind'])} {_md_escape(a.get('dag_id') or '')} "
                f"(budget {_md_escape(a.get('budget') or '—')}, {_md_escape(a['status'])}){ref}"
            )
    else:
        lines.append("None.")
    paused = summary.get("paused_dags") or []
    if paused:
        lines += ["", "## Paused by FinOps", ""]
        for p in paused:
            lines.append(f"- {_md_escape(p['dag_id'])} since {p['at'][:16]}: {_md_escape(p.get('reason') or '')}")
    acc = (summary.get("estimate_accuracy") or {}).get("platforms") or []
    if acc:
        lines += [
            "",
            "## Estimate accuracy",
            "",
            "| Platform | Tasks | Estimated | Billed | Bias | Mean abs. error |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for a in acc:
            cur = a["currency"]
            bias = f"{a['bias_pct']} %" if a["bias_pct"] is not None else "n/a"
            mae = (
                f"{round_display(Decimal(a['mean_abs_error_pct']))} %" if a["mean_abs_error_pct"] is not None else "n/a"
            )
            lines.append(
                f"| {_md_escape(a['platform'])} | {a['tasks']} | {fmt_money(a['estimate'], cur)} | "
                f"{fmt_money(a['truth'], cur)} | {bias} | {mae} |"
            )
    return lines


def round_display(value: Decimal, places: int = 2) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
