"""Bulk FOCUS aggregation in DuckDB agrees exactly with the row path, routes doubtful rows to it, and is idempotent."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from finops_provider.core.aggregation import aggregate
from finops_provider.core.allocation import Attributor
from finops_provider.core.bulk import aggregate_focus_files, ingest_focus_bulk
from finops_provider.core.config import parse_config
from finops_provider.core.focus import BadRow, read_focus, write_focus
from finops_provider.core.ledger import Ledger

BY = ["day", "provider", "service", "account", "region", "charge_category", "team", "cost_center", "dag", "job"]
CONFIG = parse_config(
    {
        "teams": {"PeoriaData": {"cost_center": "CC-PEORIA"}, "ops": {"cost_center": "CC-OPS"}},
        "dags": {"exact_dag": {"team": "ops"}, "etl_*": {"team": "ops", "cost_center": "CC-ETL"}},
        "attribution": {"team": ["business_unit", "team"], "cost_center": ["cost_center"],
                        "dag_id": ["application"]},
    }
)  # fmt: skip


def _row_path(paths: list[Path], config=CONFIG):
    att = Attributor(config)
    recs = [att.apply(r) for p in paths for r in read_focus(p) if not isinstance(r, BadRow)]
    return aggregate(recs, BY), aggregate(recs, BY, "effective")


@pytest.mark.parametrize("fmt", [pytest.param("csv", id="csv"), pytest.param("parquet", id="parquet")])
def test_bulk_equals_row_path_on_the_real_sample(focus_sample_path: Path, tmp_path: Path, fmt: str) -> None:
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


def test_doubtful_rows_take_the_exact_row_path(tmp_path: Path) -> None:
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


def test_config_values_are_bound_parameters(tmp_path: Path) -> None:
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
