"""Executive-summary extensions (issue 7) on the demo month + the real FOCUS sample: every figure is checked
against the ledger, exactly (conservation), and the new sections say what they should."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from finops_provider.core.aggregation import aggregate_ledger
from finops_provider.core.budgets import period_bounds
from finops_provider.core.summary import (
    BREAKDOWNS,
    actions_taken,
    breach_eta_text,
    build_summary,
    paused_dags,
    render_markdown,
)


@pytest.fixture(scope="module")
def summary(demo_ledger: dict[str, Any]) -> dict[str, Any]:
    return build_summary(demo_ledger["ledger"], demo_ledger["config"], now=demo_ledger["now"], top_n=10_000)


def _period(s: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
    return dt.datetime.fromisoformat(s["period"]["start"]), dt.datetime.fromisoformat(s["period"]["end"])


def test_totals_and_every_breakdown_equal_the_ledger(demo_ledger: dict, summary: dict) -> None:
    led = demo_ledger["ledger"]
    start, end = _period(summary)
    month = led.totals(start=start, end=end)
    assert summary["totals"]["billed"] == month.to_json()
    assert len(month.currencies) == 2  # USD and EUR, never added together
    for dim in BREAKDOWNS:
        for cur in month.currencies:
            rows = [Decimal(r["amount"]) for r in summary["breakdowns"][dim] if r["currency"] == cur]
            assert sum(rows, Decimal(0)) == month.get(cur).amount, (dim, cur)
    for cur in month.currencies:  # the charts' daily series conserve too
        daily = [Decimal(d["amount"]) for d in summary["daily"] if d["currency"] == cur]
        assert sum(daily, Decimal(0)) == month.get(cur).amount


def test_task_breakdown_matches_the_ledger_per_task(demo_ledger: dict, summary: dict) -> None:
    led = demo_ledger["ledger"]
    start, end = _period(summary)
    task, cur = next((r["key"], r["currency"]) for r in summary["breakdowns"]["task"] if r["key"] != "(unallocated)")
    dag_id, task_id = task.split(".", 1)
    want = led.totals(start=start, end=end, dag_id=dag_id, task_id=task_id).get(cur).amount
    assert Decimal(next(r["amount"] for r in summary["breakdowns"]["task"] if r["key"] == task)) == want


def test_idle_share_is_the_idle_rows(demo_ledger: dict, summary: dict) -> None:
    start, end = _period(summary)
    idle = [r for r in demo_ledger["ledger"].records(start=start, end=end) if r.x_job_id == "(idle)"]
    assert {r.x_platform for r in idle} == {"snowflake", "kubernetes", "fabric"}
    want = sum((r.billed_cost for r in idle), Decimal(0))
    got = summary["idle"]["USD"]
    assert Decimal(got["amount"]) == want
    assert sum((Decimal(p["amount"]) for p in got["by_platform"]), Decimal(0)) == want
    total = Decimal(summary["totals"]["billed"]["USD"])
    assert Decimal(got["share_pct"]) == (want * 100 / total).quantize(Decimal("0.01"))


def test_top_movers_compare_like_for_like(demo_ledger: dict, summary: dict) -> None:
    led = demo_ledger["ledger"]
    start, end = _period(summary)
    prev_start, _ = period_bounds("month", start - dt.timedelta(seconds=1))
    prev_end = prev_start + (demo_ledger["now"] - start)
    for dim in ("team", "dag"):
        movers = summary["top_movers"][dim]
        assert movers, dim
        now_g = {(g.keys[0], g.currency): g.amount for g in aggregate_ledger(led, [dim], start=start, end=end).groups}
        prev_g = {
            (g.keys[0], g.currency): g.amount
            for g in aggregate_ledger(led, [dim], start=prev_start, end=prev_end).groups
        }
        for m in movers:
            k = (m["key"], m["currency"])
            assert Decimal(m["current"]) == now_g.get(k, 0) and Decimal(m["previous"]) == prev_g.get(k, 0)
            assert Decimal(m["change"]) == Decimal(m["current"]) - Decimal(m["previous"])
        changes = [abs(Decimal(m["change"])) for m in movers]
        assert changes == sorted(changes, reverse=True)


def test_burndown_ends_at_the_budget_actual_with_an_eta_sentence(summary: dict) -> None:
    assert summary["budget_burndown"]
    by_name = {b["budget"]: b for b in summary["budgets"]}
    for b in summary["budget_burndown"]:
        last = Decimal(b["series"][-1]["cumulative"]) if b["series"] else Decimal(0)
        assert last == Decimal(b["actual"]["amount"]) == Decimal(by_name[b["budget"]]["actual"]["amount"])
        assert b["eta_text"] == by_name[b["budget"]]["eta_text"] and b["budget"] in b["eta_text"]


@pytest.mark.parametrize(
    ("used", "eta", "want"),
    [
        pytest.param(
            "45.00",
            "2026-10-19T06:00:00+00:00",
            "team data-eng breaches its monthly budget b on the 19th (2026-10-19) at this burn rate",
            id="eta",
        ),
        pytest.param("45.00", "2026-10-02T06:00:00+00:00", "on the 2nd (2026-10-02)", id="ordinal-2nd"),
        pytest.param("45.00", "2026-10-11T06:00:00+00:00", "on the 11th", id="ordinal-11th"),
        pytest.param(
            "104.50", None, "team data-eng is over its monthly budget b: 104.50 USD of 100.00 USD (104.50 %)", id="over"
        ),
        pytest.param(
            "20.00", None, "team data-eng is on track: forecast 40.00 % of its monthly budget b", id="on-track"
        ),
    ],
)
def test_breach_eta_text(used: str, eta: str | None, want: str) -> None:
    b = {
        "budget": "b",
        "scope": {"team": "data-eng"},
        "period": "month",
        "amount": {"amount": "100", "currency": "USD"},
        "actual": {"amount": used, "currency": "USD"},
        "utilisation_pct": used,
        "forecast_pct": "40.00",
        "breach_eta": eta,
        "forecast_model": "linear",
    }
    assert want in breach_eta_text(b)


def test_estimate_accuracy_is_the_reconciliation(demo_ledger: dict, summary: dict) -> None:
    got = {(a["platform"], a["currency"]): a for a in summary["estimate_accuracy"]["platforms"]}
    want = {k: a.to_json() for k, a in demo_ledger["reconcile"].accuracy.items()}
    assert got == want and len(got) == 7
    assert summary["estimate_accuracy"]["pending_estimate_rows"] == {}  # every demo estimate has truth


def test_actions_and_paused_dags(demo_ledger: dict, summary: dict) -> None:
    kinds = [(a["kind"], a["dag_id"]) for a in summary["actions"]]
    assert ("pause", "ingest_orders") in kinds and ("unpause", "cdc_mysql_users") in kinds
    # the unpaused DAG is not listed; the paused one is, with its reason
    assert [(p["dag_id"], p["actor"]) for p in summary["paused_dags"]] == [("ingest_orders", "finops:budget=orders")]
    assert paused_dags(demo_ledger["ledger"]) == summary["paused_dags"]
    now = dt.datetime.now(dt.UTC)  # the outbox item was enqueued now: a ticket with its delivery status
    recent = actions_taken(demo_ledger["ledger"], now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    assert [(a["source"], a["kind"], a["status"], a["budget"]) for a in recent] == [
        ("outbox", "jira", "pending", "orders")
    ]


def test_markdown_has_the_new_sections_escaped(summary: dict) -> None:
    md = render_markdown(summary)
    for title in (
        "## Budget burn-down",
        "## Top movers by team",
        "## Idle capacity",
        "## Actions taken",
        "## Paused by FinOps",
        "## Estimate accuracy",
        "## Top by task",
    ):
        assert title in md, title
    assert "<script>" not in md and "\\<script\\>" in md
