"""Grouping by any keys conserves money exactly, keeps (unallocated) visible and never mixes currencies."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finops_provider.core.aggregation import DIMENSIONS, aggregate, aggregate_rows, needed_columns
from finops_provider.core.allocation import Attributor
from finops_provider.core.config import parse_config
from finops_provider.core.records import UNALLOCATED, CostRecord, build_record

SAMPLE_TOTALS = {"billed": Decimal("20.52022672899"), "effective": Decimal("14.97651418586")}
SINGLE_DIMS = [d for d in DIMENSIONS if d != "tag:<key>"] + ["tag:environment", "tag:CostCenter", "tag:nope"]
COMBOS = [
    ("team", "service"),
    ("platform", "day"),
    ("cost_center", "team", "region"),
    ("tag:environment", "provider", "month"),
    ("account", "sub_account", "sku", "charge_category"),
    ("dag", "task", "run", "job"),
]
CONFIG = parse_config(
    {
        "attribution": {"team": ["business_unit"], "cost_center": ["CostCenter"]},
        "teams": {"ViennaAI": {"cost_center": "CC-VIE"}},
        "dags": {},
    }
)


@pytest.fixture
def attributed(sample_records: list[CostRecord]) -> list[CostRecord]:
    return list(Attributor(CONFIG).apply_all(sample_records))


def test_attribution_of_the_sample(attributed: list[CostRecord]) -> None:
    assert sum(1 for r in attributed if r.x_team) == 660
    vienna = [r for r in attributed if r.x_team == "ViennaAI"]
    assert len(vienna) == 6
    assert {r.x_cost_center for r in vienna} == {"CC-VIE"}  # from the team mapping
    assert sum(1 for r in attributed if r.x_cost_center == "1234") == 36  # from the CostCenter tag


@pytest.mark.parametrize("basis", [pytest.param("billed", id="billed"), pytest.param("effective", id="effective")])
@pytest.mark.parametrize(
    "by", [pytest.param((d,), id=d) for d in SINGLE_DIMS] + [pytest.param(c, id="+".join(c)) for c in COMBOS]
)
def test_sample_groups_sum_to_the_total(attributed: list[CostRecord], by: tuple[str, ...], basis: str) -> None:
    agg = aggregate(attributed, by, basis)
    assert sum((g.amount for g in agg.groups), Decimal(0)) == SAMPLE_TOTALS[basis]
    assert agg.total().to_json() == {"USD": str(SAMPLE_TOTALS[basis])}
    assert sum(g.rows for g in agg.groups) == 1000
    assert len({(g.keys, g.currency) for g in agg.groups}) == len(agg.groups)
    assert all(len(g.keys) == len(by) for g in agg.groups)


def test_unallocated_team_is_a_row_of_its_own(attributed: list[CostRecord]) -> None:
    agg = aggregate(attributed, ["team"])
    by_key = {g.keys[0]: g for g in agg.groups}
    unowned = [r for r in attributed if not r.x_team]
    assert by_key[UNALLOCATED].rows == len(unowned) == 340
    assert by_key[UNALLOCATED].amount == sum((r.billed_cost for r in unowned), Decimal(0))


def test_platform_falls_back_to_provider(make_record) -> None:
    recs = [
        make_record("1", provider_name="AWS"),
        make_record("2", provider_name="AWS", x_platform="databricks"),
        make_record("4", provider_name=None),
    ]
    assert aggregate(recs, ["platform"]).as_dict() == {
        (("AWS",), "USD"): Decimal("1"),
        (("databricks",), "USD"): Decimal("2"),
        ((UNALLOCATED,), "USD"): Decimal("4"),
    }


def test_task_and_run_keys_need_the_dag(make_record) -> None:
    recs = [make_record("1", x_dag_id="etl", x_task_id="load", x_run_id="r1"), make_record("2", x_task_id="orphan")]
    assert aggregate(recs, ["task"]).as_dict() == {
        (("etl.load",), "USD"): Decimal(1),
        ((UNALLOCATED,), "USD"): Decimal(2),
    }
    assert aggregate(recs, ["run"]).as_dict() == {(("etl/r1",), "USD"): Decimal(1), ((UNALLOCATED,), "USD"): Decimal(2)}


def test_currencies_are_never_summed_together(make_record) -> None:
    recs = [
        make_record("1.5", x_team="data"),
        make_record("2", x_team="data", billing_currency="EUR"),
        make_record("0.5", x_team="data", hour=1),
        make_record("100", billing_currency="JPY"),
    ]
    agg = aggregate(recs, ["team"])
    assert agg.as_dict() == {
        (("data",), "EUR"): Decimal("2"),
        (("data",), "USD"): Decimal("2.0"),
        ((UNALLOCATED,), "JPY"): Decimal("100"),
    }
    assert agg.total().to_json() == {"EUR": "2", "JPY": "100", "USD": "2"}
    assert [g.keys for g in agg.top(5, currency="USD")] == [("data",)]


def test_missing_basis_amount_counts_as_zero_but_keeps_the_row(make_record) -> None:
    recs = [make_record("1", x_team="a", list_cost=None), make_record("2", x_team="a", list_cost=Decimal("3"))]
    (g,) = aggregate(recs, ["team"], basis="list").groups
    assert (g.amount, g.rows) == (Decimal("3"), 2)


def test_day_and_month_keys_are_utc(make_record) -> None:
    start = dt.datetime(2024, 9, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))  # 2024-10-01T01:30Z
    r = make_record("1", charge_period_start=start, charge_period_end=start + dt.timedelta(hours=1))
    assert aggregate([r], ["day", "month"]).groups[0].keys == ("2024-10-01", "2024-10")


def test_top_and_json(make_record) -> None:
    recs = [make_record(str(i), x_team=f"t{i}") for i in (3, 1, 2)] + [make_record("3", x_team="t0", hour=1)]
    agg = aggregate(recs, ["team"])
    assert [g.keys[0] for g in agg.top(3)] == ["t0", "t3", "t2"]  # ties ordered by key
    assert agg.to_json()[0] == {"team": "t0", "currency": "USD", "amount": "3", "rows": 1}


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        pytest.param("colour", "unknown dimension 'colour'", id="unknown"),
        pytest.param("tag:", "tag dimension needs a key", id="empty-tag"),
    ],
)
def test_bad_dimension(make_record, dim: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aggregate([make_record()], [dim])


def test_needed_columns() -> None:
    assert needed_columns(["platform", "task", "tag:env"], "effective") == [
        "effective_cost",
        "billing_currency",
        "x_platform",
        "provider_name",
        "x_dag_id",
        "x_task_id",
        "tags",
    ]


# -------------------------------------------------------------- property
_rec = st.builds(
    lambda i, s, cur, team, service, day, tag: build_record(
        billed_cost=Decimal(f"{i}E-{s}"),
        billing_currency=cur,
        x_team=team,
        service_name=service,
        charge_period_start=dt.datetime(2024, 9, 1, tzinfo=dt.UTC) + dt.timedelta(days=day),
        charge_period_end=dt.datetime(2024, 9, 1, tzinfo=dt.UTC) + dt.timedelta(days=day, hours=1),
        tags={"env": tag} if tag else {},
    ),
    st.integers(-(10**21), 10**21),
    st.integers(0, 16),
    st.sampled_from(["USD", "EUR", "JPY"]),
    st.one_of(st.none(), st.sampled_from(["data", "web", ""])),
    st.one_of(st.none(), st.sampled_from(["S3", "EC2"])),
    st.integers(0, 40),
    st.one_of(st.none(), st.sampled_from(["prod", "dev"])),
)
_by = st.lists(
    st.sampled_from(["team", "service", "day", "month", "tag:env", "platform", "cost_center"]),
    min_size=1,
    max_size=3,
    unique=True,
)


@settings(max_examples=200, deadline=None)
@given(records=st.lists(_rec, max_size=40), by=_by)
def test_conservation_property(records: list[CostRecord], by: list[str]) -> None:
    agg = aggregate(records, by)
    expected: dict[str, Fraction] = {}
    for r in records:
        expected[r.billing_currency] = expected.get(r.billing_currency, Fraction(0)) + Fraction(r.billed_cost)
    got: dict[str, Fraction] = {}
    for g in agg.groups:
        got[g.currency] = got.get(g.currency, Fraction(0)) + Fraction(g.amount)
    assert got == expected
    assert sum(g.rows for g in agg.groups) == len(records)
    if "team" in by:
        unowned = sum(1 for r in records if not r.x_team)
        i = by.index("team")
        assert sum(g.rows for g in agg.groups if g.keys[i] == UNALLOCATED) == unowned


def test_aggregate_rows_with_explicit_columns() -> None:
    cols = ["billed_cost", "billing_currency", "x_team"]
    rows = [(Decimal("1.1"), "USD", "a"), (Decimal("2.2"), "USD", None), (None, "USD", "a")]
    agg = aggregate_rows(rows, cols, ["team"])
    assert agg.as_dict() == {(("a",), "USD"): Decimal("1.1"), ((UNALLOCATED,), "USD"): Decimal("2.2")}
    assert {g.keys[0]: g.rows for g in agg.groups} == {"a": 2, UNALLOCATED: 1}
