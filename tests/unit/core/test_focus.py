"""FOCUS reader and writer on the real FOCUS 1.0 multi-cloud sample: every row, every digit."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal
from pathlib import Path

import pytest

from finops_provider.core.focus import (
    BadRow,
    detect_format,
    read_focus,
    read_focus_csv,
    records_to_csv_text,
    sum_column,
    write_focus,
    write_focus_csv,
)
from finops_provider.core.records import COLUMNS, CostRecord, RecordError

SAMPLE_BILLED = Decimal("20.52022672899")
SAMPLE_EFFECTIVE = Decimal("14.97651418586")


def _split(items: list[CostRecord | BadRow]) -> tuple[list[CostRecord], list[BadRow]]:
    return [i for i in items if isinstance(i, CostRecord)], [i for i in items if isinstance(i, BadRow)]


# ------------------------------------------------------------- the real sample
def test_sample_reads_every_row(focus_sample_path: Path) -> None:
    recs, bad = _split(list(read_focus(focus_sample_path)))
    assert len(recs) == 1000
    assert bad == []
    assert len({r.x_line_item_id for r in recs}) == 1000  # the sample's Id column is the line-item id
    assert {r.billing_currency for r in recs} == {"USD"}
    assert {r.provider_name for r in recs} == {"AWS", "Microsoft", "Oracle"}


def test_sample_totals_are_exact(sample_records: list[CostRecord]) -> None:
    assert sum_column(sample_records, "billed_cost") == {"USD": SAMPLE_BILLED}
    assert sum_column(sample_records, "effective_cost") == {"USD": SAMPLE_EFFECTIVE}
    assert str(sum_column(sample_records)["USD"]) == "20.52022672899"


def test_sample_negative_rows_are_kept(sample_records: list[CostRecord]) -> None:
    negative = [r for r in sample_records if r.billed_cost < 0 or (r.effective_cost or 0) < 0]
    assert len(negative) == 13
    assert all(r.billed_cost < 0 for r in negative)


def test_sample_times_are_utc(sample_records: list[CostRecord]) -> None:
    for r in sample_records:
        assert r.charge_period_start.tzinfo is dt.UTC
        assert r.charge_period_end.tzinfo is dt.UTC
        assert r.charge_period_start <= r.charge_period_end
    assert min(r.charge_period_start for r in sample_records) == dt.datetime(2024, 9, 1, tzinfo=dt.UTC)
    assert max(r.charge_period_start for r in sample_records) == dt.datetime(2024, 9, 30, 23, tzinfo=dt.UTC)
    # the real export has one OCI row billed in the next billing period: kept as-is, not "fixed"
    outside = [r for r in sample_records if r.billing_period_start > r.charge_period_start]
    assert [(r.provider_name, r.billing_period_start.month) for r in outside] == [("Oracle", 10)]


def test_sample_tags_are_parsed(sample_records: list[CostRecord]) -> None:
    tagged = [r for r in sample_records if r.tags]
    assert len(tagged) == 711
    assert sum(1 for r in sample_records if "business_unit" in r.tags) == 660


# ----------------------------------------------------------------- round trips
def _assert_same(a: list[CostRecord], b: list[CostRecord]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x == y
        assert x.content_hash() == y.content_hash()
        assert x.identity() == y.identity()


def test_csv_round_trip_keeps_every_row_and_digit(sample_records: list[CostRecord], tmp_path: Path) -> None:
    out = tmp_path / "sample.csv"
    assert write_focus(sample_records, out) == 1000
    back, bad = _split(list(read_focus(out)))
    assert bad == []
    _assert_same(sample_records, back)
    # the text of every amount survives, not only its value
    assert [str(r.billed_cost) for r in back] == [str(r.billed_cost) for r in sample_records]
    assert sum_column(back) == {"USD": SAMPLE_BILLED}


def test_parquet_round_trip_keeps_every_row_and_digit(sample_records: list[CostRecord], tmp_path: Path) -> None:
    out = tmp_path / "sample.parquet"
    assert write_focus(sample_records, out) == 1000
    back, bad = _split(list(read_focus(out)))
    assert bad == []
    _assert_same(sample_records, back)
    assert sum_column(back, "effective_cost") == {"USD": SAMPLE_EFFECTIVE}


EXTREMES = [
    pytest.param({"billed_cost": Decimal("0.0000000000000001")}, id="smallest-amount"),
    pytest.param({"billed_cost": Decimal("123456789012345678901.5")}, id="largest-amount"),
    pytest.param({"billed_cost": Decimal("-9999999999999999999999.9999999999999999")}, id="38-digit-credit"),
    pytest.param({"pricing_quantity": Decimal("1E-16"), "list_unit_price": Decimal("6.25")}, id="quantities"),
    pytest.param({"tags": {"équipe": "données", 'k,"q"': "line\nbreak"}}, id="unicode-and-quoting-tags"),
    pytest.param({"charge_description": 'a, "quoted"\nmulti-line description'}, id="csv-quoting"),
    pytest.param({"charge_period_start": dt.datetime(2024, 9, 1, 0, 0, 0, 123456, tzinfo=dt.UTC)}, id="microseconds"),
    pytest.param({"x_provisional": True, "x_cost_kind": "estimate", "x_dag_id": "etl"}, id="extension-columns"),
]


@pytest.mark.parametrize("changes", EXTREMES)
@pytest.mark.parametrize("suffix", [pytest.param(".csv", id="csv"), pytest.param(".parquet", id="parquet")])
def test_round_trip_of_edge_values(make_record, tmp_path: Path, suffix: str, changes: dict) -> None:
    rec = make_record("1.00", **changes)
    out = tmp_path / f"edge{suffix}"
    write_focus([rec, rec], out)
    back, bad = _split(list(read_focus(out)))
    assert bad == []
    _assert_same([rec, rec], back)


def test_csv_writer_uses_focus_header_and_utc_z_times(make_record) -> None:
    text = records_to_csv_text([make_record("0.10", day=2)])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == [c.focus for c in COLUMNS]
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["BilledCost"] == "0.10"
    assert row["ChargePeriodStart"] == "2024-09-03T00:00:00Z"
    micro = make_record("0.10", charge_period_start=dt.datetime(2024, 9, 1, 0, 0, 0, 5, tzinfo=dt.UTC))
    assert "2024-09-01T00:00:00.000005Z" in records_to_csv_text([micro])
    assert row["Tags"] == ""


# -------------------------------------------------------------------- bad rows
HEADER = "Id,BilledCost,EffectiveCost,BillingCurrency,ChargePeriodStart,ChargePeriodEnd,Tags"
GOOD = '{id},1.50,1.25,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,"{{""team"": ""data""}}"'

BAD_LINES = [
    ("end-before-start", "b1,1,1,USD,2024-09-01T02:00:00Z,2024-09-01T01:00:00Z,", "ChargePeriodEnd", "before"),
    ("nan-cost", "b2,NaN,1,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,", "BilledCost", "not a finite amount"),
    ("unknown-currency", "b3,1,1,XYZ,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,", "BillingCurrency", "ISO-4217"),
    ("invalid-tags", 'b4,1,1,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,"{""team"": }"', "Tags", "not valid JSON"),
    (
        "30-digit-amount",
        f"b5,{'9' * 30},1,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,",
        "BilledCost",
        "out of range",
    ),
    (
        "17-decimals",
        "b6,1,0.12345678901234567,USD,2024-09-01T00:00:00Z,2024-09-01T01:00:00Z,",
        "EffectiveCost",
        "more than 16 decimal places",
    ),
    ("wrong-field-count", "b7,1,1,USD,2024-09-01T00:00:00Z", "(row)", "has 5 fields, the header has 7"),
]


def test_bad_rows_are_reported_and_valid_rows_still_come_through() -> None:
    lines = [HEADER]
    expected_bad: dict[int, tuple[str, str]] = {}
    n = 0
    for i, (_, bad_line, field, reason) in enumerate(BAD_LINES):
        n += 1
        lines.append(GOOD.format(id=f"g{i}"))
        n += 1
        lines.append(bad_line)
        expected_bad[n] = (field, reason)
    lines.append(GOOD.format(id="last"))
    items = list(read_focus_csv(io.StringIO("\n".join(lines) + "\n")))
    recs, bad = _split(items)
    assert [r.x_line_item_id for r in recs] == [f"g{i}" for i in range(len(BAD_LINES))] + ["last"]
    assert sum_column(recs) == {"USD": Decimal("1.50") * (len(BAD_LINES) + 1)}
    assert {b.row_number: b.field for b in bad} == {k: v[0] for k, v in expected_bad.items()}
    for b in bad:
        assert expected_bad[b.row_number][1] in b.reason, (b.row_number, b.reason)


@pytest.mark.parametrize(("label", "line", "field", "reason"), [pytest.param(*case, id=case[0]) for case in BAD_LINES])
def test_each_bad_row_alone(label: str, line: str, field: str, reason: str) -> None:
    items = list(read_focus_csv(io.StringIO(f"{HEADER}\n{line}\n")))
    assert len(items) == 1
    bad = items[0]
    assert isinstance(bad, BadRow)
    assert (bad.row_number, bad.field) == (1, field)
    assert reason in bad.reason


def test_bad_row_keeps_the_raw_values_for_quarantine() -> None:
    items = list(read_focus_csv(io.StringIO(f"{HEADER}\n{BAD_LINES[1][1]}\n")))
    assert isinstance(items[0], BadRow)
    assert items[0].raw["BilledCost"] == "NaN"
    assert items[0].raw["Id"] == "b2"


def test_missing_required_column_fails_the_file() -> None:
    with pytest.raises(RecordError) as ei:
        list(read_focus_csv(io.StringIO("Id,BilledCost,ChargePeriodStart\n1,1,2024-09-01\n")))
    assert ei.value.field == "BillingCurrency"
    assert "ChargePeriodEnd" in ei.value.message


def test_bom_header_and_empty_file() -> None:
    text = "\ufeff" + HEADER + "\n" + GOOD.format(id="x") + "\n"
    (rec,) = list(read_focus_csv(io.StringIO(text)))
    assert isinstance(rec, CostRecord) and rec.billed_cost == Decimal("1.50")
    assert list(read_focus_csv(io.StringIO(""))) == []


def test_duplicate_rows_have_equal_identity() -> None:
    text = HEADER + "\n" + GOOD.format(id="dup") + "\n" + GOOD.format(id="dup") + "\n"
    a, b = list(read_focus_csv(io.StringIO(text)))
    assert isinstance(a, CostRecord) and isinstance(b, CostRecord)
    assert a.identity() == b.identity()
    assert a.content_hash() == b.content_hash()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        pytest.param("x.csv", "csv", id="csv"),
        pytest.param("x.CSV.gz", "csv", id="csv-gz"),
        pytest.param("x.parquet", "parquet", id="parquet"),
        pytest.param("x.pq", "parquet", id="pq"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt


def test_detect_format_unknown() -> None:
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("x.xlsx")


def test_gzip_csv_is_read(sample_records: list[CostRecord], tmp_path: Path) -> None:
    import gzip

    out = tmp_path / "sample.csv.gz"
    with gzip.open(out, "wt", encoding="utf-8", newline="") as fh:
        write_focus_csv(sample_records[:50], fh)
    back, bad = _split(list(read_focus(out)))
    assert bad == []
    _assert_same(sample_records[:50], back)
