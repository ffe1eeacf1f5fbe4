"""Table-level cost: a task's estimate split across its outlet assets (exact conservation), and the summary's
"Table (asset)" breakdown reading it back from the ledger."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.estimate import TaskCostSpec, TaskTry, estimate, split_by_assets
from finops_provider.core.ledger import Ledger
from finops_provider.core.pricing import RateCard
from finops_provider.core.summary import BREAKDOWNS, build_summary

UTC = dt.UTC
START = dt.datetime(2026, 3, 1, 10, tzinfo=UTC)
CARD = RateCard.load()
TABLES = ["snowflake://acct/sales/public/orders", "snowflake://acct/sales/public/customers", "s3://lake/raw/events"]


class Asset:
    """Stands in for ``airflow.sdk.Asset`` in this Airflow-free core test (same ``uri`` / ``name`` attributes)."""

    def __init__(self, uri: str) -> None:
        self.uri, self.name = uri, uri


def _record(cost: str = "1", task: str = "load"):
    t = TaskTry("sales_etl", task, "manual__1", 1, START, START + dt.timedelta(hours=1))
    return estimate(t, TaskCostSpec(cost=Decimal(cost)), CARD)


@settings(max_examples=200, deadline=None)
@given(
    cost=st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e9"), places=10, allow_nan=False),
    n=st.integers(min_value=1, max_value=7),
    weights=st.lists(st.integers(min_value=0, max_value=10**6), min_size=7, max_size=7),
    weighted=st.booleans(),
)
def test_parts_sum_exactly_to_the_task_cost(cost, n, weights, weighted) -> None:
    rec = _record(str(cost))
    uris = [f"table://db/t{i}" for i in range(n)]
    w = {u: weights[i] for i, u in enumerate(uris)} if weighted and any(weights[:n]) else None
    parts = split_by_assets(rec, uris, weights=w)
    assert [p.x_asset for p in parts] == uris
    assert sum((p.billed_cost for p in parts), Decimal(0)) == rec.billed_cost
    assert sum((p.effective_cost for p in parts), Decimal(0)) == rec.effective_cost
    assert sum((p.pricing_quantity for p in parts), Decimal(0)) == rec.pricing_quantity
    assert len({p.identity() for p in parts}) == n  # distinct ledger rows
    if w is not None:
        assert all(p.billed_cost == 0 for p in parts if w[p.x_asset] == 0)


@pytest.mark.parametrize(
    ("assets", "expected"),
    [
        pytest.param([], None, id="no-outlets-unchanged"),
        pytest.param([Asset(TABLES[0]), TABLES[0]], [Decimal("0.9")], id="duplicate-outlet-once"),
        pytest.param([Asset(u) for u in TABLES], [Decimal("0.3")] * 3, id="three-tables-equal"),
    ],
)
def test_split_rule(assets, expected) -> None:
    rec = _record("0.9")
    parts = split_by_assets(rec, assets)
    if expected is None:
        assert parts == [rec] and rec.x_asset is None
    else:
        assert [p.billed_cost for p in parts] == expected
        assert all(p.x_line_item_id.startswith(rec.x_line_item_id + "#") for p in parts)


def test_all_zero_weights_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        split_by_assets(_record(), TABLES, weights={u: 0 for u in TABLES})


def test_summary_shows_cost_per_table(tmp_path: Path) -> None:
    assert BREAKDOWNS["asset"] == "Table (asset)"
    with Ledger(f"sqlite:///{tmp_path / 'l.db'}") as led:
        recs = split_by_assets(_record("3", "load"), TABLES[:2]) + split_by_assets(_record("1", "enrich"), TABLES[:1])
        led.ingest([*recs, _record("5", "no_outlets")], source="airflow-estimate")
        s = build_summary(led, FinOpsConfig(), now=START, anomalies=[], statuses=[])
    rows = {r["key"]: Decimal(r["amount"]) for r in s["breakdowns"]["asset"]}
    assert rows == {TABLES[0]: Decimal("2.5"), TABLES[1]: Decimal("1.5"), "(unallocated)": Decimal(5)}
