"""Executive summary data, rendered as Markdown and JSON (stable schema, money as exact strings).

The data is built from the ledger once; renderers only format it (rounding HALF_EVEN for display).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from finops_provider.core.aggregation import aggregate_ledger
from finops_provider.core.anomaly import Anomaly, detector_from_config
from finops_provider.core.budgets import BudgetEngine, BudgetStatus, pct, period_bounds
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.money import Money
from finops_provider.core.records import UNALLOCATED

SCHEMA_VERSION = "1"
OTHER = "(other)"
BREAKDOWNS = {
    "platform": "Platform",
    "team": "Team",
    "cost_center": "Cost center",
    "dag": "Job (DAG)",
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
    """Build the executive summary for the period containing ``now``."""
    start, end = period_bounds(period, now)
    prev_start, _ = period_bounds(period, start - dt.timedelta(seconds=1))
    billed = ledger.totals("billed", start=start, end=end)
    effective = ledger.totals("effective", start=start, end=end)
    previous = ledger.totals("billed", start=prev_start, end=start)
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
        trend[cur] = {"previous": str(prev), "change_pct": str(pct(amt - prev, prev)) if prev else None}
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
        "budgets": [s.to_json(now) for s in statuses],
        "breaches": [b.to_json() for s in statuses for b in s.breaches],
        "anomalies": [a.to_json() for a in anomalies],
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
    lines.append("")
    return "\n".join(lines)


def round_display(value: Decimal, places: int = 2) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
