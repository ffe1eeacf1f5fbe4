"""Bulk FOCUS aggregation in DuckDB agrees exactly with the row path, routes doubtful rows to it, and is idempotent."""

from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from finops_provider.core import bulk
from finops_provider.core.aggregation import aggregate
from finops_provider.core.allocation import Attributor
from finops_provider.core.bulk import aggregate_focus_files, ingest_focus_bulk
from finops_provider.core.config import parse_config
from finops_provider.core.focus import BadRow, read_focus, write_focus
from finops_provider.core.ledger import KeyedRows, Ledger
from finops_provider.core.records import build_record

BY = ["day", "provider", "service", "account", "region", "charge_category", "team", "cost_center", "dag", "job"]
CONFIG = parse_config(
    {
        "teams": {"PeoriaData": {"cost_center": "CC-PEORIA"}, "ops": {"cost_center": "CC-OPS"}},
        "dags": {"exact_dag": {"team": "ops"}, "etl_*": {"team": "ops", "cost_center": "CC-ETL"}},
        "attribution": {"team": ["business_unit", "team"], "cost_center": ["cost_center"],
                        "dag_id": ["application"]},
    }
)  # fmt: skip


@pytest.fixture(params=[pytest.param("per-distinct", id="tags-per-distinct"),
                        pytest.param("per-row", id="tags-per-row")])  # fmt: skip
def tags_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of reading tags: parsed once per distinct string (few distinct), reduced per row (many)."""
    if request.param == "per-row":
        monkeypatch.setattr(bulk, "_TAGS_DISTINCT_MAX", -1)
    return str(request.param)


def _row_path(paths: list[Path], config=CONFIG):
    att = Attributor(config)
    recs = [att.apply(r) for p in paths for r in read_focus(p) if not isinstance(r, BadRow)]
    return aggregate(recs, BY), aggregate(recs, BY, "effective")


@pytest.mark.parametrize("fmt", [pytest.param("csv", id="csv"), pytest.param("parquet", id="parquet")])
def test_bulk_equals_row_path_on_the_real_sample(
    focus_sample_path: Path, tmp_path: Path, fmt: str, tags_mode: str
) -> None:
    path = focus_sample_path
    if fmt == "parquet":
        path = tmp_path / "sample.parquet"
        write_focus([r for r in read_focus(focus_sample_path)], path)
    res = aggregate_focus_files([path], CONFIG)
    assert res.rows_in == 1000 and not res.bad_rows and not res.slow_records
    billed, effective = _row_path([focus_sample_path])
    assert aggregate(res.records, BY).as_dict() == billed.as_dict()
    assert aggregate(res.records, BY, "effective").as_dict() == effective.as_dict()
    assert aggregate(res.records, ["team"]).total().get("USD").amount == Decimal("20.52022672899")
    assert sum(r.pricing_quantity for r in res.records) == 1000


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


HEADER = [
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ServiceName",
    "Tags",
]


def test_doubtful_rows_take_the_exact_row_path(tmp_path: Path, tags_mode: str) -> None:
    rows = [
        ["1.25", "1.25", "USD", "2026-10-01 00:00:00", "2026-10-01 01:00:00", "A", '{"team": "ops"}'],
        ["1E-7", "1E-7", "USD", "2026-10-01 00:00:00", "2026-10-01 01:00:00", "A", '{"team": "ops"}'],  # exponent form
        ["0.12345678901234567", "0", "USD", "2026-10-01 00:00:00", "2026-10-01 01:00:00", "A", ""],  # 17 decimals
        ["NaN", "0", "USD", "2026-10-01 00:00:00", "2026-10-01 01:00:00", "A", ""],
        ["5", "5", "XYZ", "2026-10-01 00:00:00", "2026-10-01 01:00:00", "A", ""],
        ["5", "5", "EUR", "2026-10-02 00:00:00", "2026-10-01 00:00:00", "A", ""],  # end before start
        ["-3.5", "-3.5", "eur", "2026-10-01T02:00:00+02:00", "2026-10-01T03:00:00+02:00", "B", "{not json"],
    ]
    res = aggregate_focus_files([_write_csv(tmp_path / "f.csv", HEADER, rows)], CONFIG)
    assert res.rows_in == 7
    assert {b.field for b in res.bad_rows} == {"BilledCost", "BillingCurrency", "ChargePeriodEnd", "Tags"}
    assert [r.billed_cost for r in res.slow_records] == [Decimal("1E-7")]
    totals = aggregate(res.records + res.slow_records, ["team"]).total()
    assert totals.get("USD").amount == Decimal("1.2500001")
    assert "EUR" not in totals.currencies  # the only EUR rows were bad
    ops = [r for r in res.records if r.x_team == "ops"]
    assert ops and ops[0].x_cost_center == "CC-OPS"


def test_config_values_are_bound_parameters(tmp_path: Path, tags_mode: str) -> None:
    evil = "x'); DROP TABLE raw; --"
    cfg = parse_config({"attribution": {"team": [evil, 'q"uote']}, "dags": {evil + "*": {"team": "t'; --"}},
                        "teams": {"t'; --": {"cost_center": "c'c"}}})  # fmt: skip
    t0, t1 = "2026-10-01 00:00:00", "2026-10-01 01:00:00"
    rows = [
        ["2", "2", "USD", t0, t1, "A", '{"q\\"uote": "o\'wner", "application": "d"}'],
        ["3", "3", "USD", t0, t1, "A", '{"application": "' + "x'); DROP TABLE raw; --y" + '"}'],
    ]
    cfg2 = cfg.model_copy(update={"attribution": cfg.attribution.model_copy(update={"dag_id": ("application",)})})
    res = aggregate_focus_files([_write_csv(tmp_path / "f.csv", HEADER, rows)], cfg2)
    teams = {r.x_team: (r.billed_cost, r.x_cost_center) for r in res.records}
    assert teams == {"o'wner": (Decimal("2"), None), "t'; --": (Decimal("3"), "c'c")}


def test_bulk_ingest_is_idempotent_and_restatable(tmp_path: Path, focus_sample_path: Path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    for _ in range(3):
        res, ing = ingest_focus_bulk(led, [focus_sample_path], CONFIG)
    assert ing.unchanged == len(res.records) and ing.inserted == 0
    assert led.totals().get("USD").amount == Decimal("20.52022672899")
    # a re-delivered export with one line restated and one gone supersedes the old one
    lines = focus_sample_path.read_text().splitlines()
    restated = tmp_path / "restated.csv"
    restated.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # first data row removed
    first = next(r for r in read_focus(focus_sample_path))
    ingest_focus_bulk(led, [restated], CONFIG)
    assert led.totals().get("USD").amount == Decimal("20.52022672899") - first.billed_cost


def test_rows_only_the_row_path_can_judge_are_quarantined_naming_the_field(tmp_path: Path, tags_mode: str) -> None:
    t0, t1 = "2026-10-01 00:00:00", "2026-10-01 01:00:00"
    header = [*HEADER, "x_CostKind"]
    rows = [
        ["1.5", "1.5", "USD", t0, t1, "A", '{"team": "ops"}', ""],
        ["2", "2", "", t0, t1, "A", '{"team": "ops"}', ""],  # no currency
        ["4", "4", "USD", t0, t1, "A", '{"team": "' + "x" * 2000 + '"}', ""],  # valid JSON, but a 2,000-char tag
        ["8", "8", "USD", t0, t1, "A", '{"team": "ops"}', "guess"],  # not a cost kind
        ["16", "16", "USD", t0, t1, "A", "null", "estimate"],  # JSON null is no tags (as the row path reads it)
    ]
    res = aggregate_focus_files([_write_csv(tmp_path / "f.csv", header, rows)], CONFIG)
    assert res.rows_in == 5
    assert sorted(b.field for b in res.bad_rows) == ["BillingCurrency", "Tags", "x_CostKind"]
    valid = res.records + res.slow_records
    assert sorted(r.billed_cost for r in valid) == [Decimal("1.5"), Decimal("16")]
    assert {r.x_cost_kind for r in valid} == {"billed", "estimate"}


def test_parquet_money_beyond_the_ledger_range_is_quarantined(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "wide.parquet"
    start = pa.array([dt.datetime(2026, 10, 1, tzinfo=dt.UTC)] * 2, pa.timestamp("us", tz="UTC"))
    pq.write_table(
        pa.table({"BilledCost": pa.array([Decimal("1.25"), Decimal("1" + "0" * 23)], pa.decimal128(38, 2)),
                  "BillingCurrency": ["USD", "USD"], "ChargePeriodStart": start, "ChargePeriodEnd": start}),
        path,
    )  # fmt: skip
    res = aggregate_focus_files([path], CONFIG)
    assert [b.field for b in res.bad_rows] == ["BilledCost"]
    assert [r.billed_cost for r in res.records] == [Decimal("1.25")]


def test_a_restated_group_is_audited_and_a_vanished_group_removed(tmp_path: Path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    t0, t1 = "2026-10-01 00:00:00", "2026-10-01 01:00:00"
    first = [["1", "1", "USD", t0, t1, "A", '{"team": "ops"}'], ["2", "2", "USD", t0, t1, "A", '{"team": "ops"}'],
             ["5", "5", "USD", t0, t1, "A", '{"team": "PeoriaData"}']]  # fmt: skip
    _, ing = ingest_focus_bulk(led, [_write_csv(tmp_path / "a.csv", HEADER, first)], CONFIG)
    assert (ing.inserted, ing.restated, ing.removed) == (2, 0, 0)
    # re-delivered: ops' second line restated from 2 to 3, PeoriaData's line gone
    again = [first[0], ["3", "3", "USD", t0, t1, "A", '{"team": "ops"}']]
    _, ing = ingest_focus_bulk(led, [_write_csv(tmp_path / "b.csv", HEADER, again)], CONFIG)
    assert (ing.inserted, ing.restated, ing.removed, ing.unchanged) == (0, 1, 1, 0)
    audit = {a["action"]: (a["old_billed_cost"], a["new_billed_cost"]) for a in led.audit_log()}
    assert audit == {"restated": (Decimal("3"), Decimal("4")), "removed": (Decimal("5"), None)}
    assert led.totals().get("USD").amount == Decimal("4")
    _, ing = ingest_focus_bulk(led, [tmp_path / "b.csv"], CONFIG)
    assert (ing.inserted, ing.restated, ing.removed, ing.unchanged) == (0, 0, 0, 1)


def test_keyed_rows_are_stored_exactly_as_records_are(tmp_path: Path) -> None:
    rec = build_record(billed_cost=Decimal("1.50"), effective_cost=Decimal("-0.0000000000000001"),
                       billing_currency="EUR", charge_period_start=dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
                       charge_period_end=dt.datetime(2026, 10, 2, tzinfo=dt.UTC), service_name="S", x_team="t",
                       pricing_quantity=Decimal(3), tags={"b": "2", "a": "1"}, x_provisional=True)  # fmt: skip
    by_record = Ledger(f"sqlite:///{tmp_path / 'a.db'}")
    by_record.ingest([rec], source="s")
    cols = ["billed_cost", "effective_cost", "billing_currency", "charge_period_start", "charge_period_end",
            "service_name", "x_team", "pricing_quantity", "tags", "x_provisional",
            "natural_key", "content_hash"]  # fmt: skip
    values = [getattr(rec, c) for c in cols[:-2]]
    keyed = Ledger(f"sqlite:///{tmp_path / 'b.db'}")
    keyed.ingest([], source="s", keyed=KeyedRows(cols, [[*values, "k:0", "h"]]))
    assert list(keyed.records()) == list(by_record.records()) == [rec.replace(x_source="focus")]
    assert keyed.totals().get("EUR").amount == Decimal("1.50")
    with pytest.raises(ValueError, match="appears twice"):  # the batch is refused whole
        keyed.ingest([], source="s", keyed=KeyedRows(cols, [[*values, "k2:0", "h"], [*values, "k2:0", "h"]]))
    assert keyed.count() == 1
    with pytest.raises(ValueError, match="unknown"):
        keyed.ingest([], source="s", keyed=KeyedRows([*cols, "no_such_column"], []))
