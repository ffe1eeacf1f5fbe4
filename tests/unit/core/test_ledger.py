"""The ledger, on a SQLite file and on a real PostgreSQL (every test runs on both; see tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops_provider.core.budgets import Breach
from finops_provider.core.focus import BadRow, read_focus, read_focus_csv
from finops_provider.core.ledger import Ledger, redact_url
from finops_provider.core.money import Money
from finops_provider.core.records import CostRecord, build_record
from finops_provider.core.schema import SCHEMA_REVISION, metadata

UTC = dt.UTC
SAMPLE_BILLED = Decimal("20.52022672899")
SAMPLE_EFFECTIVE = Decimal("14.97651418586")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger(ledger_url) as led:
        yield led


def _bag(bag) -> dict[str, Decimal]:
    """Per-currency values (PostgreSQL pads NUMERIC(38, 16) with zeros, so compare values, not text)."""
    return {m.currency: m.amount for m in bag.items()}


def _usd(ledger: Ledger, basis: str = "billed", **filters) -> Decimal:
    return ledger.totals(basis, **filters).get("USD").amount


# ------------------------------------------------------------------- schema
def test_migrations_create_exactly_the_declared_schema(ledger: Ledger) -> None:
    insp = sa.inspect(ledger.engine)
    assert set(insp.get_table_names()) == set(metadata.tables) | {"finops_alembic_version"}
    for name, table in metadata.tables.items():
        cols = insp.get_columns(name)
        assert [c["name"] for c in cols] == [c.name for c in table.columns], name
        assert {c["name"]: c["nullable"] for c in cols} == {
            c.name: (c.nullable and not c.primary_key) for c in table.columns
        }, name
        assert insp.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key], name
        declared_ix = {ix.name: [c.name for c in ix.columns] for ix in table.indexes}
        assert {
            ix["name"]: ix["column_names"] for ix in insp.get_indexes(name) if ix["name"] in declared_ix
        } == declared_ix
    uniques = [u["column_names"] for u in insp.get_unique_constraints("finops_cost_line")]
    unique_ix = [ix["column_names"] for ix in insp.get_indexes("finops_cost_line") if ix["unique"]]
    assert ["natural_key"] in uniques + unique_ix
    assert ledger.schema_revision() == SCHEMA_REVISION


def test_money_columns_are_exact_types(ledger: Ledger) -> None:
    col = {c["name"]: c for c in sa.inspect(ledger.engine).get_columns("finops_cost_line")}["billed_cost"]
    if ledger.dialect == "postgresql":
        assert isinstance(col["type"], sa.Numeric)
        assert (col["type"].precision, col["type"].scale) == (38, 16)
    else:  # SQLite stores exact decimal text, never a float
        assert isinstance(col["type"], sa.String)


def test_reopening_a_migrated_ledger_keeps_its_rows(ledger: Ledger, make_record) -> None:
    ledger.ingest([make_record("1.5")], source="t")
    with Ledger(ledger.url) as again:
        assert again.schema_revision() == SCHEMA_REVISION
        assert again.count() == 1


def test_repr_hides_password() -> None:
    assert "secret" not in redact_url("postgresql://u:secret@h/db")
    assert redact_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


# ------------------------------------------------------------------- money
EXACT = [
    Decimal("0.0000000000000001"),
    Decimal("123456789012345678901.5"),
    Decimal("-9999999999999999999999.9999999999999999"),
    Decimal("0.1"),
    Decimal("0.2"),
    Decimal("0"),
]


def test_money_round_trips_exactly(ledger: Ledger, make_record) -> None:
    recs = [
        make_record(
            v,
            hour=i,
            effective_cost=v.copy_negate(),
            list_cost=None,
            pricing_quantity=Decimal("1E-16"),
            tags={"team": "data", "é": "ü"},
            x_line_item_id=f"li-{i}",
        )
        for i, v in enumerate(EXACT)
    ]
    res = ledger.ingest(recs, source="exact")
    assert res.inserted == len(EXACT)
    back = list(ledger.records())
    assert back == recs
    assert [r.billed_cost for r in back] == EXACT
    assert back[0].billed_cost == Decimal("0.0000000000000001")
    assert back[1].billed_cost == Decimal("123456789012345678901.5")
    assert all(r.list_cost is None for r in back)
    assert all(r.charge_period_start.tzinfo is not None for r in back)
    expected = sum((Fraction(v) for v in EXACT), Fraction(0))
    assert _usd(ledger) == Decimal("-9876543210987654321098.1999999999999998")
    assert Fraction(_usd(ledger)) == expected
    assert Fraction(_usd(ledger, "effective")) == -expected
    assert list(res.totals) == ["USD"]
    assert Fraction(Decimal(res.totals["USD"])) == expected


def test_times_stay_utc_with_microseconds(ledger: Ledger, make_record) -> None:
    start = dt.datetime(2024, 9, 1, 2, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    ledger.ingest(
        [make_record("1", charge_period_start=start, charge_period_end=start + dt.timedelta(hours=1))], source="t"
    )
    (r,) = ledger.records()
    assert r.charge_period_start == dt.datetime(2024, 9, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert r.charge_period_start.utcoffset() == dt.timedelta(0)


# ------------------------------------------------------------- the sample
def test_sample_ingests_with_exact_totals(ledger: Ledger, focus_sample_path: Path, sample_records) -> None:
    res = ledger.ingest(read_focus(focus_sample_path), source="focus-file")
    assert (res.rows_in, res.inserted, res.restated, res.unchanged, res.quarantined) == (1000, 1000, 0, 0, 0)
    assert res.totals == {"USD": "20.52022672899"}
    assert ledger.count() == 1000
    assert _usd(ledger) == SAMPLE_BILLED
    assert _usd(ledger, "effective") == SAMPLE_EFFECTIVE
    assert list(ledger.records()) == sample_records


def test_ingesting_the_same_file_three_times_equals_once(ledger: Ledger, focus_sample_path: Path) -> None:
    results = [ledger.ingest(read_focus(focus_sample_path), source="focus-file") for _ in range(3)]
    assert [(r.inserted, r.unchanged, r.restated) for r in results] == [(1000, 0, 0), (0, 1000, 0), (0, 1000, 0)]
    assert ledger.count() == 1000
    assert _usd(ledger) == SAMPLE_BILLED
    assert _usd(ledger, "effective") == SAMPLE_EFFECTIVE
    assert ledger.audit_log() == []
    batches = ledger.batches()
    assert len(batches) == 3
    assert sorted((b["rows_in"], b["inserted"], b["unchanged"]) for b in batches) == [
        (1000, 0, 1000),
        (1000, 0, 1000),
        (1000, 1000, 0),
    ]
    assert all(b["finished_at"] is not None for b in batches)


def test_identical_rows_in_one_batch_are_two_charges(ledger: Ledger, make_record) -> None:
    rec = make_record("0.75", x_line_item_id="same")
    first = ledger.ingest([rec, rec.replace()], source="t")
    assert (first.inserted, ledger.count(), _usd(ledger)) == (2, 2, Decimal("1.50"))
    again = ledger.ingest([rec, rec.replace()], source="t")
    assert (again.inserted, again.unchanged, ledger.count(), _usd(ledger)) == (0, 2, 2, Decimal("1.50"))


def test_restated_row_supersedes_with_audit(ledger: Ledger, make_record) -> None:
    old = make_record("10.00", effective_cost=Decimal("9.00"), x_line_item_id="li-1")
    other = make_record("1.00", x_line_item_id="li-2")
    ledger.ingest([old, other], source="aws-cur")
    new = old.replace(billed_cost=Decimal("12.50"), effective_cost=Decimal("11.00"))
    res = ledger.ingest([new, other], source="aws-cur", batch_id="restate-1")
    assert (res.inserted, res.restated, res.unchanged) == (0, 1, 1)
    assert ledger.count() == 2
    assert _usd(ledger) == Decimal("13.50")
    assert [r.billed_cost for r in ledger.records()] == [Decimal("12.50"), Decimal("1.00")]
    (audit,) = ledger.audit_log()
    assert audit["action"] == "restated"
    assert audit["batch_id"] == "restate-1"
    assert audit["natural_key"] == f"{old.identity()}:0"
    assert (audit["old_billed_cost"], audit["new_billed_cost"]) == (Decimal("10.00"), Decimal("12.50"))
    assert (audit["old_effective_cost"], audit["new_effective_cost"]) == (Decimal("9.00"), Decimal("11.00"))
    assert (audit["old_content_hash"], audit["new_content_hash"]) == (old.content_hash(), new.content_hash())
    assert audit["billing_currency"] == "USD"


def test_replace_window_removes_vanished_rows(ledger: Ledger, make_record) -> None:
    window = (dt.datetime(2024, 9, 1, tzinfo=UTC), dt.datetime(2024, 9, 2, tzinfo=UTC))
    keep = make_record("1.00", hour=1, x_line_item_id="keep")
    gone = make_record("2.00", effective_cost=Decimal("1.75"), hour=2, x_line_item_id="gone")
    outside = make_record("4.00", day=1, x_line_item_id="outside")  # 2024-09-02: outside the window
    ledger.ingest([keep, gone, outside], source="ce", scope="acct-1")
    ledger.ingest([make_record("8.00", hour=3, x_line_item_id="other-scope")], source="ce", scope="acct-2")
    res = ledger.ingest([keep], source="ce", scope="acct-1", window=window, replace_window=True, batch_id="b2")
    assert (res.removed, res.unchanged) == (1, 1)
    assert sorted(r.x_line_item_id for r in ledger.records()) == ["keep", "other-scope", "outside"]
    assert _usd(ledger) == Decimal("13.00")
    (audit,) = ledger.audit_log()
    assert (audit["action"], audit["batch_id"], audit["natural_key"]) == ("removed", "b2", f"{gone.identity()}:0")
    assert (audit["old_billed_cost"], audit["new_billed_cost"]) == (Decimal("2.00"), None)
    assert (audit["old_effective_cost"], audit["new_effective_cost"]) == (Decimal("1.75"), None)
    assert ledger.audit_log(natural_key=f"{gone.identity()}:0") == [audit]


def test_replace_window_needs_a_window(ledger: Ledger, make_record) -> None:
    with pytest.raises(ValueError, match="needs window"):
        ledger.ingest([make_record()], source="t", replace_window=True)


def test_bad_rows_are_quarantined_and_valid_rows_land(ledger: Ledger) -> None:
    text = (
        "Id,BilledCost,BillingCurrency,ChargePeriodStart,ChargePeriodEnd,Tags\n"
        "ok-1,1.10,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,\n"
        "bad-1,NaN,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,\n"
        "ok-2,2.20,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,\n"
        "bad-2,1,XYZ,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,\n"
        'bad-3,1,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,"{oops"\n'
        "ok-3,3.30,EUR,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,\n"
    )
    res = ledger.ingest(read_focus_csv(io.StringIO(text)), source="focus-file", batch_id="q1")
    assert (res.rows_in, res.inserted, res.quarantined) == (6, 3, 3)
    assert sorted(r.x_line_item_id for r in ledger.records()) == ["ok-1", "ok-2", "ok-3"]
    assert _bag(ledger.totals()) == {"EUR": Decimal("3.30"), "USD": Decimal("3.30")}
    q = ledger.quarantined("q1")
    assert [(x["row_number"], x["field"]) for x in q] == [(2, "BilledCost"), (4, "BillingCurrency"), (5, "Tags")]
    assert "not a finite amount" in q[0]["reason"]
    assert "ISO-4217" in q[1]["reason"]
    assert "not valid JSON" in q[2]["reason"]
    assert json.loads(q[0]["raw"])["Id"] == "bad-1"
    assert all(x["source"] == "focus-file" for x in q)
    assert ledger.quarantined("other-batch") == []
    (batch,) = ledger.batches()
    assert (batch["quarantined"], batch["inserted"]) == (3, 3)


def test_currencies_are_totalled_separately(ledger: Ledger, make_record) -> None:
    ledger.ingest(
        [make_record("1.5"), make_record("2", billing_currency="EUR"), make_record("0.5", hour=1)], source="t"
    )
    assert _bag(ledger.totals()) == {"EUR": Decimal("2"), "USD": Decimal("2.0")}
    assert ledger.count(currency="EUR") == 1


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({}, Decimal("15"), id="all"),
        pytest.param({"team": "data"}, Decimal("3"), id="team"),
        pytest.param({"dag_id": "etl"}, Decimal("3"), id="dag"),
        pytest.param({"task_id": "load"}, Decimal("2"), id="task"),
        pytest.param({"platform": "snowflake"}, Decimal("4"), id="platform-explicit"),
        pytest.param({"platform": "AWS"}, Decimal("11"), id="platform-falls-back-to-provider"),
        pytest.param({"service": "Amazon S3"}, Decimal("15"), id="service"),
        pytest.param({"start": dt.datetime(2024, 9, 2, tzinfo=UTC)}, Decimal("12"), id="start"),
        pytest.param({"end": dt.datetime(2024, 9, 2, tzinfo=UTC)}, Decimal("3"), id="end-exclusive"),
        pytest.param({"scope": "other"}, Decimal("8"), id="scope-defaults-to-source"),
        pytest.param({"source": "focus"}, Decimal("15"), id="record-source"),
    ],
)
def test_filters(ledger: Ledger, make_record, filters: dict, expected: Decimal) -> None:
    ledger.ingest(
        [
            make_record("1", x_team="data", x_dag_id="etl", x_task_id="extract"),
            make_record("2", hour=1, x_team="data", x_dag_id="etl", x_task_id="load"),
            make_record("4", day=1, x_platform="snowflake"),
        ],
        source="t",
    )
    ledger.ingest([make_record("8", day=2)], source="other")
    assert _usd(ledger, **filters) == expected


def test_daily_totals_are_exact_per_utc_day(ledger: Ledger, make_record) -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    late = dt.datetime(2024, 9, 2, 1, 30, tzinfo=plus2)  # 2024-09-01 23:30 UTC: counts on the 1st
    ledger.ingest(
        [
            make_record("0.1000000000000001", x_team="data"),
            make_record("0.2", hour=5, x_team="data", effective_cost=None),
            make_record("7", charge_period_start=late, charge_period_end=late + dt.timedelta(hours=1), x_team="data"),
            make_record("1E-16", day=1, x_team="data"),
            make_record("100", day=1, x_team="data", billing_currency="EUR"),
            make_record("50", day=1, x_team="ml"),
        ],
        source="t",
    )
    daily = ledger.daily_totals(currency="USD", team="data")
    assert daily == {dt.date(2024, 9, 1): Decimal("7.3000000000000001"), dt.date(2024, 9, 2): Decimal("1E-16")}
    assert ledger.daily_totals("effective", currency="USD", team="data") == {
        dt.date(2024, 9, 1): Decimal("7.1000000000000001"),
        dt.date(2024, 9, 2): Decimal("1E-16"),
    }
    assert ledger.daily_totals(currency="EUR") == {dt.date(2024, 9, 2): Decimal("100")}
    # the same figures as summing the rows in Python
    by_row: dict[dt.date, Decimal] = {}
    for amount, start in ledger.rows(["billed_cost", "charge_period_start"], currency="USD", team="data"):
        by_row[start.date()] = by_row.get(start.date(), Decimal(0)) + amount
    assert daily == by_row
    assert _bag(ledger.totals(team="data")) == {"EUR": Decimal("100"), "USD": sum(by_row.values())}


def test_ledgers_of_one_url_share_one_engine_and_check_the_schema_once(ledger_url: str, monkeypatch) -> None:
    from finops_provider.core import ledger as ledger_mod

    with Ledger(ledger_url) as a, Ledger(ledger_url) as b:
        assert a.engine is b.engine
    checks: list[str] = []
    monkeypatch.setattr(Ledger, "schema_revision", lambda self: checks.append(self.url) or SCHEMA_REVISION)
    with Ledger(ledger_url) as c:
        assert c.count() == 0
    assert checks == []  # seen at head before: not checked again
    with Ledger(ledger_url) as d:
        with pytest.raises(sa.exc.DBAPIError), d.engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))
    with Ledger(ledger_url):
        pass
    assert checks == [ledger_url]  # a database error: checked again on the next open
    ledger_mod.dispose_engines()
    with Ledger(ledger_url) as e:
        assert e.engine is not a.engine


def test_in_memory_ledgers_stay_separate(make_record) -> None:
    with Ledger("sqlite://") as a, Ledger("sqlite://") as b:
        assert a.engine is not b.engine
        a.ingest([make_record("1")], source="t")
        assert (a.count(), b.count()) == (1, 0)


# ------------------------------------------------------------------ breaches
def _breach(pct: str = "80") -> Breach:
    start = dt.datetime(2024, 9, 1, tzinfo=UTC)
    return Breach(
        budget="team-data",
        period="month",
        period_start=start,
        period_end=dt.datetime(2024, 10, 1, tzinfo=UTC),
        threshold_pct=Decimal(pct),
        basis="actual",
        actions=("notify", "ticket"),
        budget_amount=Money.of("1000"),
        actual=Money.of("812.3456789"),
        forecast=Money.of("1500.0000000001"),
    )


def test_claim_breach_is_true_once(ledger: Ledger) -> None:
    b = _breach()
    assert ledger.claim_breach(b) is True
    assert ledger.claim_breach(b) is False
    assert ledger.claim_breach(_breach()) is False  # an equal breach from another evaluation
    assert ledger.claim_breach(_breach("100")) is True
    rows = {r["dedupe_key"]: r for r in ledger.breaches()}
    assert set(rows) == {
        "team-data|month:2024-09-01T00:00:00Z|actual|80",
        "team-data|month:2024-09-01T00:00:00Z|actual|100",
    }
    row = rows[b.dedupe_key]
    assert (row["actual"], row["forecast"], row["budget_amount"]) == (
        Decimal("812.3456789"),
        Decimal("1500.0000000001"),
        Decimal("1000"),
    )
    assert json.loads(row["actions"]) == ["notify", "ticket"]
    assert row["period_start"] == dt.datetime(2024, 9, 1, tzinfo=UTC)


# ------------------------------------------------------- idempotence property
_amounts = st.builds(lambda i, s: Decimal(f"{i}E-{s}"), st.integers(-(10**20), 10**20), st.integers(0, 16))
_records = st.lists(
    st.builds(
        lambda amount, cur, hour, item, team: build_record(
            billed_cost=amount,
            billing_currency=cur,
            charge_period_start=dt.datetime(2024, 9, 1, tzinfo=UTC) + dt.timedelta(hours=hour),
            charge_period_end=dt.datetime(2024, 9, 1, tzinfo=UTC) + dt.timedelta(hours=hour + 1),
            x_line_item_id=item,
            x_team=team,
        ),
        _amounts,
        st.sampled_from(["USD", "EUR"]),
        st.integers(0, 5),
        st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
        st.one_of(st.none(), st.sampled_from(["data", "web"])),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=_records, times=st.integers(1, 3))
def test_ingesting_n_times_equals_once_property(records: list[CostRecord], times: int) -> None:
    with tempfile.TemporaryDirectory() as d, Ledger(f"sqlite:///{Path(d) / 'p.db'}") as led:
        for _ in range(times):
            led.ingest(list(records), source="prop")
        assert led.count() == len(records)
        expected: dict[str, Fraction] = {}
        for r in records:
            expected[r.billing_currency] = expected.get(r.billing_currency, Fraction(0)) + Fraction(r.billed_cost)
        got = {m.currency: Fraction(m.amount) for m in led.totals().items()}
        assert got == expected
        assert sorted(r.content_hash() for r in led.records()) == sorted(r.content_hash() for r in records)


def test_bad_row_instances_are_accepted_directly(ledger: Ledger, make_record) -> None:
    res = ledger.ingest(
        [BadRow(7, "BilledCost", "NaN is not a finite amount", {"BilledCost": "NaN"}), make_record("1")], source="api"
    )
    assert (res.inserted, res.quarantined) == (1, 1)
    (q,) = ledger.quarantined()
    assert (q["row_number"], q["field"], q["reason"]) == (7, "BilledCost", "NaN is not a finite amount")
