"""Bulk FOCUS ingest: aggregate large exports in DuckDB (exact DECIMAL), write only aggregates to the ledger.

Month-end FOCUS / CUR exports hold hundreds of millions of line items; the ledger needs them at the grain
budgets and reports use (day × provider × service × account × region × charge category × currency ×
platform × cost kind × owner). This module pushes the GROUP BY into DuckDB over the Parquet / CSV files,
applies the same attribution rules as :class:`~finops_provider.core.allocation.Attributor` in SQL (tag keys,
DAG glob mappings and team → cost-center mappings arrive as bound parameters, never as SQL text), and returns
one :class:`CostRecord` per group. Sums are DuckDB ``DECIMAL(38, 16)``: exact, like the row path.

Rows the fast path cannot vouch for (a money value with more than 16 decimals or in exponent form, an
unparseable time, an unknown currency, ChargePeriodEnd before Start) are not guessed at: they are read as text
and go through the exact row path (:func:`~finops_provider.core.records.record_from_mapping`), which either
builds a record or a :class:`~finops_provider.core.focus.BadRow` naming the column — no valid row is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.focus import BadRow
from finops_provider.core.money import ISO_4217
from finops_provider.core.records import CostRecord, RecordError, build_record, record_from_mapping

log = logging.getLogger(__name__)

_MONEY = ("BilledCost", "EffectiveCost", "ListCost", "ContractedCost")
#: FOCUS column -> record attribute for the group keys (all TEXT)
_KEYS = {
    "ProviderName": "provider_name",
    "PublisherName": "publisher_name",
    "InvoiceIssuerName": "invoice_issuer_name",
    "ServiceName": "service_name",
    "ServiceCategory": "service_category",
    "BillingAccountId": "billing_account_id",
    "BillingAccountName": "billing_account_name",
    "SubAccountId": "sub_account_id",
    "RegionId": "region_id",
    "ChargeCategory": "charge_category",
    "x_Platform": "x_platform",
    "x_CostKind": "x_cost_kind",
}
_PLAIN_DECIMAL = r"[-+]?[0-9]{1,22}(\.[0-9]{0,16})?"


@dataclass
class BulkResult:
    """Aggregated records (one per group), rows that went through the row path, and counts."""

    records: list[CostRecord] = field(default_factory=list)
    slow_records: list[CostRecord] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    rows_in: int = 0
    window: tuple[dt.datetime, dt.datetime] | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, for profiling

    @property
    def all_items(self) -> list[CostRecord | BadRow]:
        return [*self.records, *self.slow_records, *self.bad_rows]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_path(key: str) -> str:
    return "$." + json.dumps(key)


class _Sql:
    """Collects SQL fragments and their bound parameters in order."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def p(self, value: Any) -> str:
        self.params.append(value)
        return "?"


def _source_sql(paths: Sequence[Path], fmt: str) -> str:
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    if fmt == "parquet":
        return f"read_parquet([{files}], union_by_name = true)"
    return f"read_csv([{files}], header = true, all_varchar = true, nullstr = ['NULL', ''], union_by_name = true)"


def aggregate_focus_files(paths: Sequence[str | Path], config: FinOpsConfig | None = None, *, fmt: str | None = None,
                          source: str = "focus-bulk", threads: int | None = None) -> BulkResult:  # fmt: skip
    """Aggregate FOCUS files (all Parquet or all CSV) to day-grain records with attribution applied."""
    import duckdb

    cfg = config or FinOpsConfig()
    ps = [Path(p) for p in paths]
    if not ps:
        raise ValueError("no files given")
    fmt = fmt or ("parquet" if str(ps[0]).endswith((".parquet", ".pq")) else "csv")
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(f"CREATE TEMP VIEW raw AS SELECT * FROM {_source_sql(ps, fmt)}")
    cols = {r[0]: str(r[1]).upper() for r in con.execute("DESCRIBE raw").fetchall()}
    lower = {c.lower(): c for c in cols}

    def col(name: str) -> str | None:
        return lower.get(name.lower()) or (lower.get("id") if name == "x_LineItemId" else None)

    for required in ("BilledCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd"):
        if col(required) is None:
            raise RecordError(required, f"required column missing from {ps[0].name} (and the other files)")

    s = _Sql()
    money_sql, money_ok = {}, []
    for m in _MONEY:
        c = col(m)
        if c is None:
            money_sql[m] = "NULL::DECIMAL(38,16)"
            continue
        t = cols[c]
        if t.startswith("DECIMAL") and int(t.rstrip(")").split(",")[-1]) <= 16:
            money_sql[m] = f"{_q(c)}::DECIMAL(38,16)"
        else:
            txt = f"trim({_q(c)}::VARCHAR)"
            money_sql[m] = f"TRY_CAST({txt} AS DECIMAL(38,16))"
            ok = f"regexp_full_match({txt}, '{_PLAIN_DECIMAL}')"
            money_ok.append(ok if m == "BilledCost" else f"({_q(c)} IS NULL OR {ok})")
    billed_not_null = f"{money_sql['BilledCost']} IS NOT NULL"
    start_sql = f"TRY_CAST({_q(col('ChargePeriodStart'))} AS TIMESTAMPTZ)"  # type: ignore[arg-type]
    end_sql = f"TRY_CAST({_q(col('ChargePeriodEnd'))} AS TIMESTAMPTZ)"  # type: ignore[arg-type]
    cur_sql = f"upper(trim({_q(col('BillingCurrency'))}::VARCHAR))"  # type: ignore[arg-type]
    # the currency is checked on the groups after aggregation (a per-row list lookup costs seconds at 10 M rows)
    checks = [billed_not_null, *money_ok, f"{start_sql} IS NOT NULL", f"{end_sql} IS NOT NULL",
              f"{end_sql} >= {start_sql}"]  # fmt: skip
    if tc := col("Tags"):  # tags must be a JSON object, as the row path requires
        is_obj = f"CASE WHEN json_valid({_q(tc)}) THEN json_type({_q(tc)}) = 'OBJECT' ELSE false END"
        checks.append(f"(nullif(trim({_q(tc)}::VARCHAR), '') IS NULL OR {is_obj})")
    fast = " AND ".join(checks)
    fast_params = list(s.params)

    # ---- attribution, mirroring Attributor.apply ---------------------------------------------------------
    a = cfg.attribution
    tags_col = col("Tags")
    tag_fields = {"team": a.team, "cost_center": a.cost_center, "dag_id": a.dag_id, "task_id": a.task_id,
                  "run_id": a.run_id, "job_id": a.job_id}  # fmt: skip
    if tags_col:
        paths_all = [_json_path(k) for f in tag_fields.values() for k in f]
        tags_txt = f"nullif(trim({_q(tags_col)}::VARCHAR), '')"
        tag_list = f"json_extract_string({tags_txt}, {s.p(paths_all)}::VARCHAR[])"
    else:
        tag_list = "NULL::VARCHAR[]"
    pos = 1
    tag_expr: dict[str, str] = {}
    for f, keys in tag_fields.items():
        parts = [f"nullif(t.tl[{pos + i}], '')" for i in range(len(keys))] if tags_col else []
        pos += len(keys)
        explicit = col(f"x_{''.join(w.capitalize() for w in f.split('_'))}")
        if explicit:
            parts.insert(0, f"nullif(t.{_q(explicit)}::VARCHAR, '')")
        tag_expr[f] = f"coalesce({', '.join(parts)})" if parts else "NULL::VARCHAR"

    def dag_lookup(attr: str) -> str:
        exact = [
            (k, getattr(v, attr)) for k, v in cfg.dags.items() if getattr(v, attr) and not any(ch in k for ch in "*?[")
        ]
        globs = [
            (k, getattr(v, attr)) for k, v in cfg.dags.items() if getattr(v, attr) and any(ch in k for ch in "*?[")
        ]
        whens = [f"WHEN dag_id = {s.p(k)} THEN {s.p(v)}" for k, v in exact]
        # first matching glob in file order, but only when no exact mapping exists for the dag (as DagConfig lookup)
        whens += [f"WHEN dag_id GLOB {s.p(k)} THEN {s.p(v)}" for k, v in globs]
        return f"CASE {' '.join(whens)} END" if whens else "NULL::VARCHAR"

    team_cc = [(k, v.cost_center) for k, v in cfg.teams.items() if v.cost_center]
    key_cols = {k: (f"t.{_q(col(k))}::VARCHAR" if col(k) else "NULL::VARCHAR") for k in _KEYS}  # type: ignore[arg-type]
    key_cols["x_CostKind"] = f"coalesce({key_cols['x_CostKind']}, 'billed')"
    s2 = _Sql()  # parameters of the outer query come after the inner ones
    s2.params = s.params
    team_case = dag_lookup("team")
    cc_case = dag_lookup("cost_center")
    plat_case = dag_lookup("platform")
    team_cc_case = (
        "CASE " + " ".join(f"WHEN team = {s2.p(k)} THEN {s2.p(v)}" for k, v in team_cc) + " END"
        if team_cc
        else "NULL::VARCHAR"
    )
    select_keys = ", ".join(f"{v} AS {_q(k)}" for k, v in key_cols.items())
    money_sel = ", ".join(f"{money_sql[m]} AS {_q(m)}" for m in _MONEY)
    sql = f"""
    WITH t0 AS (SELECT *, ({fast}) AS fast_ok FROM raw),
    t AS (SELECT *, {tag_list} AS tl FROM t0 WHERE fast_ok),
    base AS (
      SELECT date_trunc('day', {start_sql}) AS day, {cur_sql} AS currency,
             {select_keys}, {money_sel},
             {tag_expr["team"]} AS team0, {tag_expr["cost_center"]} AS cc0, {tag_expr["dag_id"]} AS dag_id,
             {tag_expr["task_id"]} AS task_id, {tag_expr["job_id"]} AS job0
      FROM t),
    owned AS (
      SELECT *, coalesce(team0, {team_case}) AS team, {cc_case} AS dag_cc, {plat_case} AS dag_platform FROM base),
    attributed AS (
      SELECT *, coalesce(cc0, dag_cc, {team_cc_case}) AS cost_center, coalesce(job0, dag_id) AS job_id,
             coalesce("x_Platform", dag_platform) AS platform FROM owned)
    SELECT day, currency, {", ".join(_q(k) for k in _KEYS if k != "x_Platform")}, platform, team, cost_center, dag_id,
           job_id, sum("BilledCost"), sum("EffectiveCost"), sum("ListCost"), sum("ContractedCost"), count(*)
    FROM attributed
    GROUP BY ALL
    """  # identifiers are quoted column names read from the file; every value is a bound parameter
    t_agg = time.perf_counter()
    rows = con.execute(sql, s.params).fetchall()
    t_records = time.perf_counter()
    res = BulkResult()
    lo: dt.datetime | None = None
    hi: dt.datetime | None = None
    names = [k for k in _KEYS if k != "x_Platform"]
    bad_currencies = sorted({str(row[1]) for row in rows if row[1] not in ISO_4217})
    for row in rows:
        day, cur = row[0], row[1]
        if cur in bad_currencies:
            continue  # these rows take the row path below, which quarantines them naming BillingCurrency
        keyvals = dict(zip(names, row[2 : 2 + len(names)], strict=True))
        platform, team, cc, dag, job = row[2 + len(names) : 7 + len(names)]
        billed, eff, lst, con_c, n = row[7 + len(names) :]
        start = day if day.tzinfo else day.replace(tzinfo=dt.UTC)
        start = start.astimezone(dt.UTC)
        lo = start if lo is None or start < lo else lo
        hi = start if hi is None or start > hi else hi
        kw = {_KEYS[k]: v for k, v in keyvals.items() if k != "x_CostKind"}
        res.records.append(
            build_record(
                billed_cost=billed, effective_cost=eff, list_cost=lst, contracted_cost=con_c, billing_currency=cur,
                charge_period_start=start, charge_period_end=start + dt.timedelta(days=1), x_source=source,
                x_cost_kind=keyvals["x_CostKind"] or "billed", x_platform=platform, x_team=team, x_cost_center=cc,
                x_dag_id=dag, x_job_id=job, pricing_quantity=n, pricing_unit="line items",
                charge_description=f"{n} line items aggregated by day", **kw,
            )
        )  # fmt: skip
        res.rows_in += int(n)
    # ---- the exact row path for everything the fast path did not vouch for ------------------------------------
    from finops_provider.core.allocation import Attributor

    attr = Attributor(cfg)
    t_slow = time.perf_counter()
    unknown_cur = f" OR list_contains({s.p(bad_currencies)}::VARCHAR[], {cur_sql})" if bad_currencies else ""
    slow = con.execute(
        f"SELECT * EXCLUDE (fast_ok) FROM (SELECT *, ({fast}) AS fast_ok FROM raw) "
        f"WHERE NOT coalesce(fast_ok, false){unknown_cur}",
        fast_params + ([bad_currencies] if bad_currencies else []),
    )
    names_raw = [d[0] for d in slow.description]
    for i, r in enumerate(slow.fetchall(), start=1):
        res.rows_in += 1
        row_map = {
            k: (None if v is None else v if isinstance(v, str) else str(v)) for k, v in zip(names_raw, r, strict=True)
        }
        try:
            rec = record_from_mapping(row_map)
            rec.x_source = source
            res.slow_records.append(attr.apply(rec))
        except RecordError as e:
            res.bad_rows.append(
                BadRow(i, e.field, e.message, {k: (v or "")[:200] for k, v in list(row_map.items())[:60]})
            )
    con.close()
    if lo is not None and hi is not None:
        res.window = (lo, hi + dt.timedelta(days=1))
    res.seconds = time.perf_counter() - t0
    res.phases = {"setup": t_agg - t0, "duckdb_group_by": t_records - t_agg, "build_records": t_slow - t_records,
                  "row_path_scan": time.perf_counter() - t_slow}  # fmt: skip
    log.info("bulk FOCUS aggregate: %d rows -> %d groups (%d via row path, %d bad) in %.2fs",
             res.rows_in, len(res.records), len(res.slow_records), len(res.bad_rows), res.seconds)  # fmt: skip
    return res


def ingest_focus_bulk(ledger: Any, paths: Sequence[str | Path], config: FinOpsConfig | None = None, *,
                      source: str = "focus-bulk", scope: str | None = None) -> tuple[BulkResult, Any]:  # fmt: skip
    """Aggregate files with :func:`aggregate_focus_files` and write the groups in one ledger batch.

    The batch replaces its ``scope`` (default: the source name) over the days the files cover, so a
    re-delivered or restated export supersedes the previous one instead of adding to it.
    """
    res = aggregate_focus_files(paths, config, source=source)
    t = time.perf_counter()
    ing = ledger.ingest(res.all_items, source=source, scope=scope or source, window=res.window,
                        replace_window=res.window is not None)  # fmt: skip
    res.phases["ledger_write"] = time.perf_counter() - t
    return res, ing
