"""Executive summary built from a ledger holding the real FOCUS sample; safe Markdown; exact JSON."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from finops_provider.core.allocation import Attributor
from finops_provider.core.config import parse_config
from finops_provider.core.focus import read_focus
from finops_provider.core.ledger import Ledger
from finops_provider.core.summary import BREAKDOWNS, build_summary, render_json, render_markdown

NOW = dt.datetime(2024, 9, 30, 23, 30, tzinfo=dt.UTC)
SAMPLE_BILLED = Decimal("20.52022672899")
SAMPLE_EFFECTIVE = Decimal("14.97651418586")
EVIL = "evil|*[x](http://a)"
CONFIG = parse_config(
    {
        "attribution": {"team": ["business_unit"]},
        "budgets": [
            {"name": "aws-monthly", "scope": {"platform": "AWS"}, "amount": "10"},
            {"name": f"{EVIL}-budget", "scope": {"team": EVIL}, "amount": "1"},
        ],
    }
)


@pytest.fixture(scope="module")
def sample_ledger(module_ledger_url: str, focus_sample_path: Path) -> Iterator[Ledger]:
    """The attributed sample in a ledger, shared read-only by this module's tests (per backend)."""
    with Ledger(module_ledger_url) as led:
        led.ingest(Attributor(CONFIG).apply_all(read_focus(focus_sample_path)), source="focus-file")
        yield led


def _money_strings(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value stored under an ``amount`` key anywhere in the summary."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "amount" and not isinstance(v, (dict, list)):
                yield f"{path}.{k}", v
            yield from _money_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _money_strings(v, f"{path}[{i}]")


def test_totals_equal_the_ledger_exactly(sample_ledger: Ledger) -> None:
    s = build_summary(sample_ledger, CONFIG, now=NOW)
    assert {c: Decimal(v) for c, v in s["totals"]["billed"].items()} == {"USD": SAMPLE_BILLED}
    assert {c: Decimal(v) for c, v in s["totals"]["effective"].items()} == {"USD": SAMPLE_EFFECTIVE}
    assert sample_ledger.totals("billed").get("USD").amount == SAMPLE_BILLED
    assert s["rows"] == 1000
    assert s["period"] == {"kind": "month", "start": "2024-09-01T00:00:00+00:00", "end": "2024-10-01T00:00:00+00:00"}
    assert s["trend"]["USD"]["change_pct"] is None  # nothing in August
    assert Decimal(s["trend"]["USD"]["previous"]) == 0


@pytest.mark.parametrize("dim", [pytest.param(d, id=d) for d in BREAKDOWNS])
def test_breakdown_groups_sum_to_the_total(sample_ledger: Ledger, dim: str) -> None:
    full = build_summary(sample_ledger, CONFIG, now=NOW, top_n=10_000, anomalies=[])
    rows = full["breakdowns"][dim]
    assert sum(Decimal(r["amount"]) for r in rows) == SAMPLE_BILLED
    assert sum(r["rows"] for r in rows) == 1000
    amounts = [Decimal(r["amount"]) for r in rows]
    assert amounts == sorted(amounts, reverse=True)
    top = build_summary(sample_ledger, CONFIG, now=NOW, anomalies=[])["breakdowns"][dim]
    assert top[:10] == rows[:10]
    if len(rows) > 10:  # the rest is one "(other)" row, so the top list still sums to the total exactly
        assert len(top) == 11 and top[10]["key"] == "(other)"
        assert Decimal(top[10]["amount"]) == sum(Decimal(r["amount"]) for r in rows[10:])
        assert top[10]["rows"] == sum(r["rows"] for r in rows[10:])
    else:
        assert top == rows
    assert sum(Decimal(r["amount"]) for r in top) == SAMPLE_BILLED


def test_unallocated_is_reported(sample_ledger: Ledger) -> None:
    s = build_summary(sample_ledger, CONFIG, now=NOW, anomalies=[])
    unowned = sum((r.billed_cost for r in sample_ledger.records() if not r.x_team), Decimal(0))
    assert Decimal(s["unallocated"]["USD"]["amount"]) == unowned
    team_rows = {
        r["key"]: Decimal(r["amount"])
        for r in build_summary(sample_ledger, CONFIG, now=NOW, top_n=10_000, anomalies=[])["breakdowns"]["team"]
    }
    assert team_rows["(unallocated)"] == unowned


def test_budgets_in_the_summary_use_ledger_spend(sample_ledger: Ledger) -> None:
    s = build_summary(sample_ledger, CONFIG, now=NOW, anomalies=[])
    aws = next(b for b in s["budgets"] if b["budget"] == "aws-monthly")
    assert Decimal(aws["actual"]["amount"]) == sample_ledger.totals("billed", platform="AWS").get("USD").amount
    assert [(br["budget"], br["threshold_pct"], br["basis"]) for br in s["breaches"]] == [
        ("aws-monthly", "50", "actual"),
        ("aws-monthly", "80", "actual"),
        ("aws-monthly", "100", "actual"),
        ("aws-monthly", "100", "forecasted"),
    ]


def test_markdown_escapes_user_controlled_names(ledger_url: str, make_record) -> None:
    with Ledger(ledger_url) as led:
        led.ingest(
            [make_record("100", day=9, x_team=EVIL), make_record("2.5", day=9, hour=1, x_team="data")], source="manual"
        )
        md = render_markdown(build_summary(led, CONFIG, now=NOW, anomalies=[]))
    escaped = r"evil\|\*\[x\](http://a)"
    assert f"| {escaped} | 100.00 USD | 97.56 % |" in md
    assert "| data | 2.50 USD | 2.44 % |" in md
    assert f"**{escaped}-budget** crossed 100 % (actual)" in md
    assert EVIL not in md
    assert "[x](http://a)" not in md
    # every table row keeps its column count: escaped pipes do not split cells
    team_section = md.split("## Top by team")[1].split("##")[0]
    for line in team_section.splitlines():
        if line.startswith("|"):
            assert line.replace("\\|", "").count("|") == 4, line


def test_markdown_totals_are_rounded_for_display_only(sample_ledger: Ledger) -> None:
    s = build_summary(sample_ledger, CONFIG, now=NOW, anomalies=[])
    md = render_markdown(s)
    assert "| USD | 20.52 USD | 14.98 USD | 0.00 USD | n/a |" in md
    assert "1,000 cost rows" in md
    assert Decimal(s["totals"]["billed"]["USD"]) == SAMPLE_BILLED  # the data keeps every digit


def test_json_is_valid_with_money_as_strings(sample_ledger: Ledger) -> None:
    s = build_summary(sample_ledger, CONFIG, now=NOW)
    text = render_json(s)
    data = json.loads(text)
    assert data["schema_version"] == "1"
    assert {c: Decimal(v) for c, v in data["totals"]["billed"].items()} == {"USD": SAMPLE_BILLED}
    found = list(_money_strings(data))
    assert len(found) > 20
    for where, value in found:
        assert isinstance(value, str), where
        Decimal(value)  # parses exactly
    assert all(isinstance(v, str) for v in data["totals"]["billed"].values())
    assert all(isinstance(r["share_pct"], str) for rows in data["breakdowns"].values() for r in rows)
    assert "Decimal(" not in text
