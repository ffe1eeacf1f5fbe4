"""Bulk FOCUS ingest: aggregate large exports in DuckDB (exact DECIMAL), write only aggregates to the ledger.

Month-end FOCUS / CUR exports hold hundreds of millions of line items; the ledger needs them at the grain
budgets and reports use (day × provider × service × account × region × charge category × currency ×
platform × cost kind × owner). This module pushes the work into DuckDB over the Parquet / CSV files in one
streaming scan and returns one group per day-grain key, with sums in DuckDB ``DECIMAL(38, 16)``: exact, like
the row path.

1. **One scan** validates every row (a flag in the same ``GROUP BY``, not a second pass) and groups the rows
   by day and the *raw* key columns, tags text included. Nothing is parsed per row: an export has millions of
   rows but only hundreds of distinct tag strings, currencies and owner columns. (When a sample shows tags
   that are nearly unique per row, the scan instead reduces each row's tags to the keys attribution reads.)
2. **Per distinct value**, in Python and with the row path's own rules: tags are parsed once per distinct
   string (:func:`~finops_provider.core.records._parse_tags`), owners come from
   :class:`~finops_provider.core.allocation.Attributor`, currencies and cost kinds are checked. The results go
   back to DuckDB as bound list parameters (never SQL text), which re-groups to the ledger grain. A group's
   identity is its key and its content hash covers its sums, both hashed as the ledger hashes records.
3. Rows the fast path cannot vouch for (a money value with more than 16 decimals or in exponent form, an
   unparseable time, ChargePeriodEnd before Start, an unknown currency or cost kind, tags the row path
   rejects) are not guessed at: only when the scan counted any are they read again, as text, and go through
   the exact row path (:func:`~finops_provider.core.records.record_from_mapping`), which either builds a record
   or a :class:`~finops_provider.core.focus.BadRow` naming the column — no valid row is lost.

The groups reach the ledger as :class:`~finops_provider.core.ledger.KeyedRows` in the same batch as the
row-path records: idempotent (same file, same keys and hashes: nothing changes), restatable (same group, new
sums: restated with an audit entry) and window-replacing (a group that vanished is removed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.focus import BadRow
from finops_provider.core.money import ISO_4217
from finops_provider.core.records import (
    COST_KINDS,
    MAX_INT_DIGITS,
    MAX_SCALE,
    CostRecord,
    RecordError,
    _parse_tags,
    build_record,
    record_from_mapping,
)

log = logging.getLogger(__name__)

_MONEY = {"BilledCost": "billed_cost", "EffectiveCost": "effective_cost", "ListCost": "list_cost",
          "ContractedCost": "contracted_cost"}  # fmt: skip
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
}
#: explicit owner columns (FOCUS name -> record attribute) that the Attributor never overwrites
_OWNERS = {"x_Platform": "x_platform", "x_Team": "x_team", "x_CostCenter": "x_cost_center", "x_DagId": "x_dag_id",
           "x_JobId": "x_job_id"}  # fmt: skip
_PLAIN_DECIMAL = rf"[-+]?[0-9]{{1,{MAX_INT_DIGITS}}}(\.[0-9]{{0,{MAX_SCALE}}})?"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: rows sampled to count distinct Tags strings, and the count above which tags are reduced per row instead
_TAGS_SAMPLE, _TAGS_DISTINCT_MAX = 100_000, 20_000


class _JsonValues(dict[Any, str]):
    """JSON text of each distinct value, computed once (group keys repeat across thousands of groups)."""

    def __missing__(self, value: Any) -> str:
        self[value] = text = json.dumps(value)  # ASCII-only: unambiguous and encodable whatever the text
        return text


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("ascii"), digest_size=16).hexdigest()


#: the columns of :attr:`BulkResult.rows` (what the ledger stores for each group)
GROUP_COLUMNS: tuple[str, ...] = (
    "charge_period_start", "charge_period_end", "billing_currency", *_KEYS.values(), "x_cost_kind",
    *_OWNERS.values(), *_MONEY.values(), "pricing_quantity", "pricing_unit", "charge_description", "x_source",
    "natural_key", "content_hash",
)  # fmt: skip


@dataclass
class BulkResult:
    """Aggregated groups (one row per group), rows that went through the row path, and counts.

    ``rows`` hold :data:`GROUP_COLUMNS` and go to the ledger as they are; ``records`` builds the same groups
    as :class:`CostRecord` s on first use.
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    slow_records: list[CostRecord] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    rows_in: int = 0
    window: tuple[dt.datetime, dt.datetime] | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase, for profiling

    @cached_property
    def records(self) -> list[CostRecord]:
        n = len(GROUP_COLUMNS) - 2  # natural_key and content_hash are not record attributes
        return [build_record(**dict(zip(GROUP_COLUMNS[:n], row[:n], strict=True))) for row in self.rows]

    @property
    def all_items(self) -> list[CostRecord | BadRow]:
        return [*self.records, *self.slow_records, *self.bad_rows]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _source_sql(paths: Sequence[Path], fmt: str) -> str:
    files = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    if fmt == "parquet":
        return f"read_parquet([{files}], union_by_name = true)"
    return f"read_csv([{files}], header = true, all_varchar = true, nullstr = ['NULL', ''], union_by_name = true)"


def aggregate_focus_files(paths: Sequence[str | Path], config: FinOpsConfig | None = None, *, fmt: str | None = None,
                          source: str = "focus-bulk", threads: int | None = None) -> BulkResult:  # fmt: skip
    """Aggregate FOCUS files (all Parquet or all CSV) to day-grain groups with attribution applied.

    :param threads: DuckDB worker threads (default: DuckDB's, one per core).
    """
    import duckdb

    from finops_provider.core.allocation import Attributor

    cfg = config or FinOpsConfig()
    ps = [Path(p) for p in paths]
    if not ps:
        raise ValueError("no files given")
    fmt = fmt or ("parquet" if str(ps[0]).endswith((".parquet", ".pq")) else "csv")
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = false")  # lets the scan stream without keeping file order
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(f"CREATE TEMP VIEW raw AS SELECT * FROM {_source_sql(ps, fmt)}")
    cols = {r[0]: str(r[1]).upper() for r in con.execute("DESCRIBE raw").fetchall()}
    lower = {c.lower(): c for c in cols}

    def col(name: str) -> str | None:
        return lower.get(name.lower())

    for required in ("BilledCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd"):
        if col(required) is None:
            raise RecordError(required, f"required column missing from {ps[0].name} (and the other files)")

    # ---- 1. one scan: per-row validity flag + GROUP BY day and the raw keys ------------------------------------
    money_sum, money_ok = {}, []
    for m in _MONEY:
        c = col(m)
        if c is None:
            money_sum[m] = "NULL::DECIMAL(38,16)"
            continue
        t = cols[c]
        width, scale = (int(x) for x in t[8:-1].split(",")) if t.startswith("DECIMAL(") else (0, 99)
        if scale <= 16:
            money_sum[m] = f"sum({_q(c)})"  # exact in the file's own scale; widened to (38,16) on the groups
            if width - scale > MAX_INT_DIGITS:  # the row path refuses 10^22 and more
                small = f"abs({_q(c)}) < 1{'0' * MAX_INT_DIGITS}"
                money_ok.append(small if m == "BilledCost" else f"({_q(c)} IS NULL OR {small})")
        else:
            txt = f"trim({_q(c)}::VARCHAR)"
            money_sum[m] = f"sum(TRY_CAST({txt} AS DECIMAL(38,16)))"
            ok = f"regexp_full_match({txt}, '{_PLAIN_DECIMAL}')"
            money_ok.append(ok if m == "BilledCost" else f"({_q(c)} IS NULL OR {ok})")
    billed = col("BilledCost")
    money_ok.insert(0, f"{_q(billed)} IS NOT NULL")  # type: ignore[arg-type]
    start_sql, end_sql = (
        _q(c) if cols[c] == "TIMESTAMP WITH TIME ZONE" else f"TRY_CAST({_q(c)} AS TIMESTAMPTZ)"
        for c in (lower["chargeperiodstart"], lower["chargeperiodend"])
    )
    cur_raw = _q(col("BillingCurrency"))  # type: ignore[arg-type]
    checks = [*money_ok, f"{cur_raw} IS NOT NULL", f"{end_sql} >= {start_sql}"]  # NULL times make this NULL
    fast = f"coalesce({' AND '.join(checks)}, false)"
    # the raw key columns present in the files, under fixed aliases (_fk0, _fk1, ...) so no file name reaches SQL text
    # except quoted; currency, tags and cost kind are normalized on the groups, not per row
    raw_keys = {"currency": cur_raw}
    for name in (*_KEYS, "x_CostKind", *_OWNERS, "Tags"):
        if c := col(name):
            raw_keys[name] = _q(c)
    key_params: list[Any] = []
    if tc := col("Tags"):
        sample = f"SELECT count(DISTINCT {_q(tc)}) FROM (SELECT {_q(tc)} FROM raw LIMIT {_TAGS_SAMPLE})"
        if con.execute(sample).fetchone()[0] > _TAGS_DISTINCT_MAX:  # type: ignore[index]
            # tags unique per resource or per row: group by a JSON object of only the keys attribution reads
            # (built per row, like the DuckDB JSON check it needs), so the groups stay as few as the owners
            att = cfg.attribution
            tag_keys = sorted({k for f in (att.team, att.cost_center, att.dag_id, att.job_id) for k in f})
            txt = f"nullif(trim({_q(tc)}::VARCHAR), '')"
            is_obj = f"CASE WHEN json_valid({txt}) THEN json_type({txt}) = 'OBJECT' ELSE false END"
            pairs = ", ".join(f"?, json_extract_string({txt}, ?)" for _ in tag_keys)
            raw_keys["Tags"] = f"CASE WHEN {is_obj} THEN json_object({pairs}) END"
            key_params = [v for k in tag_keys for v in (k, "$." + json.dumps(k))]
            fast = f"coalesce({' AND '.join([*checks, f'({txt} IS NULL OR {is_obj})'])}, false)"
    alias = {name: f"_fk{i}" for i, name in enumerate(raw_keys)}
    scan = f"""
    CREATE TEMP TABLE g AS
    SELECT {fast} AS ok, date_trunc('day', {start_sql}) AS day,
           {", ".join(f"{expr} AS {alias[name]}" for name, expr in raw_keys.items())},
           {", ".join(f"{money_sum[m]} AS m{i}" for i, m in enumerate(_MONEY))}, count(*) AS n
    FROM raw GROUP BY ALL
    """  # identifiers are quoted column names read from the file; every value is a bound parameter
    con.execute(scan, key_params)
    t_scan = time.perf_counter()

    # ---- 2. per distinct value, with the row path's rules ---------------------------------------------------------
    def text(name: str) -> str:  # a raw key of g as text (NULL when the files lack the column)
        return f"{alias[name]}::VARCHAR" if name in alias else "NULL::VARCHAR"

    cur_norm = f"upper(trim({text('currency')}))"
    kind_norm = f"coalesce(nullif({text('x_CostKind')}, ''), 'billed')"
    n_bad = con.execute("SELECT coalesce(sum(n), 0) FROM g WHERE NOT ok").fetchone()[0]  # type: ignore[index]
    bad_currencies = [
        c for (c,) in con.execute(f"SELECT DISTINCT {cur_norm} FROM g WHERE ok").fetchall() if c not in ISO_4217
    ]
    bad_kinds = [k for (k,) in con.execute(f"SELECT DISTINCT {kind_norm} FROM g WHERE ok").fetchall()
                 if k not in COST_KINDS]  # fmt: skip
    owner_cols = ["Tags", *_OWNERS]
    combos = con.execute(f"SELECT DISTINCT {', '.join(text(n) for n in owner_cols)} FROM g WHERE ok").fetchall()
    attributor = Attributor(cfg)
    tags_cache: dict[str | None, dict[str, str] | None] = {}
    bad_tags: list[str] = []
    owner_in: list[list[str | None]] = [[] for _ in owner_cols]
    owner_out: list[list[str | None]] = [[] for _ in _OWNERS]
    for combo in combos:
        tags_text, explicit = combo[0], combo[1:]
        if tags_text not in tags_cache:
            try:
                tags_cache[tags_text] = _parse_tags(tags_text)
            except RecordError:
                tags_cache[tags_text] = None
                bad_tags.append(tags_text)  # type: ignore[arg-type]  # None always parses
        tags = tags_cache[tags_text]
        if tags is None:
            continue  # these rows take the row path below, which quarantines them naming Tags
        platform, team, cost_center, dag_id, job_id = (v or None for v in explicit)
        probe = CostRecord(Decimal(0), "XXX", _EPOCH, _EPOCH, tags=tags, x_platform=platform, x_team=team,
                           x_cost_center=cost_center, x_dag_id=dag_id, x_job_id=job_id)  # fmt: skip
        attributor.apply(probe)
        for lst, v in zip(owner_in, combo, strict=True):
            lst.append(v)
        for lst, a in zip(owner_out, _OWNERS.values(), strict=True):
            lst.append(getattr(probe, a))
    t_attr = time.perf_counter()

    # ---- 3. re-group to the ledger grain; identity = the group key, content = the sums ----------------------------
    params: list[Any] = [*owner_in, *owner_out, bad_currencies, bad_kinds]
    owners_map = ", ".join(
        [f"unnest(?::VARCHAR[]) AS i{i}" for i in range(len(owner_cols))]
        + [f"unnest(?::VARCHAR[]) AS o{i}" for i in range(len(_OWNERS))]
    )
    join = " AND ".join(f"{text(n)} IS NOT DISTINCT FROM o.i{i}" for i, n in enumerate(owner_cols))
    keys = [f"{text(k)} AS {a}" for k, a in _KEYS.items()]
    owners = [f"o.o{i} AS {a}" for i, a in enumerate(_OWNERS.values())]
    sums = ", ".join(f"sum(m{i})::DECIMAL(38,16) AS {a}" for i, a in enumerate(_MONEY.values()))
    group_sql = f"""
    WITH o AS (SELECT {owners_map}),
    a AS (
      SELECT day AS charge_period_start, {cur_norm} AS billing_currency, {", ".join(keys)}, {kind_norm} AS x_cost_kind,
             {", ".join(owners)}, m0, m1, m2, m3, n
      FROM g JOIN o ON {join}
      WHERE ok),
    f AS (
      SELECT * EXCLUDE (m0, m1, m2, m3, n), {sums}, sum(n)::BIGINT AS n
      FROM a
      WHERE NOT list_contains(?::VARCHAR[], billing_currency) AND NOT list_contains(?::VARCHAR[], x_cost_kind)
      GROUP BY ALL)
    SELECT epoch_us(charge_period_start), billing_currency, {", ".join(_KEYS.values())}, x_cost_kind,
           {", ".join(_OWNERS.values())}, {", ".join(f"{c}::VARCHAR" for c in _MONEY.values())}, n
    FROM f
    """  # every value is a bound parameter
    # money comes back as text and days as epoch microseconds (DuckDB's own Decimal and TIMESTAMPTZ conversion
    # costs more per value than all the rest of a group's way into the ledger); the group's identity is its key,
    # hashed here as the ledger hashes records (JSON array -> blake2b), its content hash covers the sums
    res = BulkResult()
    spans: dict[int, tuple[dt.datetime, dt.datetime, str]] = {}
    js = _JsonValues()
    for r in con.execute(group_sql, params).fetchall():
        span = spans.get(r[0])
        if span is None:
            start = _EPOCH + dt.timedelta(microseconds=r[0])
            span = spans[r[0]] = (start, start + dt.timedelta(days=1), start.date().isoformat())
        key_values, money_text, n = r[1:-5], r[-5:-1], r[-1]
        ident = "[" + ",".join(map(js.__getitem__, (source, span[2], *key_values))) + "]"  # == json.dumps(list)
        content = "|".join([ident, *(m or "-" for m in money_text), str(n)])  # money: DECIMAL(38,16) numerals
        money = [None if v is None else Decimal(v) for v in money_text]
        res.rows.append((span[0], span[1], *key_values, *money, Decimal(n), "line items",
                         f"{n} line items aggregated by day", source, _hash(ident) + ":0", _hash(content)))  # fmt: skip
        res.rows_in += n
    t_rows = time.perf_counter()

    # ---- the exact row path, only for rows the fast path did not vouch for ------------------------------------------
    doubtful = ["NOT _fk_ok"]
    slow_params: list[Any] = []
    if bad_currencies:
        doubtful.append(f"list_contains(?::VARCHAR[], {cur_norm})")
        slow_params.append(bad_currencies)
    if bad_kinds:
        doubtful.append(f"list_contains(?::VARCHAR[], {kind_norm})")
        slow_params.append(bad_kinds)
    if bad_tags:
        doubtful.append(f"list_contains(?::VARCHAR[], {text('Tags')})")
        slow_params.append(bad_tags)
    if n_bad or len(doubtful) > 1:
        row_keys = ", ".join(f"{expr} AS {alias[name]}" for name, expr in raw_keys.items())
        slow = con.execute(
            f"SELECT * EXCLUDE (_fk_ok, {', '.join(alias.values())}) FROM "
            f"(SELECT *, {fast} AS _fk_ok, {row_keys} FROM raw) WHERE {' OR '.join(doubtful)}",
            [*key_params, *slow_params],
        )
        names_raw = [d[0] for d in slow.description]
        attr = Attributor(cfg)
        i = 0
        while batch := slow.fetchmany(10_000):
            for r in batch:
                i += 1
                res.rows_in += 1
                row_map = {k: (None if v is None else v if isinstance(v, str) else str(v))
                           for k, v in zip(names_raw, r, strict=True)}  # fmt: skip
                try:
                    rec = record_from_mapping(row_map)
                    rec.x_source = source
                    res.slow_records.append(attr.apply(rec))
                except RecordError as e:
                    res.bad_rows.append(
                        BadRow(i, e.field, e.message, {k: (v or "")[:200] for k, v in list(row_map.items())[:60]})
                    )
    con.close()
    days = [r[0] for r in res.rows] + [r.charge_period_start for r in res.slow_records]
    if days:
        lo = min(days).astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        hi = max(days).astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        res.window = (lo, hi + dt.timedelta(days=1))
    res.seconds = time.perf_counter() - t0
    res.phases = {"duckdb_scan": t_scan - t0, "attribution": t_attr - t_scan, "duckdb_regroup": t_rows - t_attr,
                  "row_path": time.perf_counter() - t_rows}  # fmt: skip
    log.info("bulk FOCUS aggregate: %d rows -> %d groups (%d via row path, %d bad) in %.2fs",
             res.rows_in, len(res.rows), len(res.slow_records), len(res.bad_rows), res.seconds)  # fmt: skip
    return res


def ingest_focus_bulk(ledger: Any, paths: Sequence[str | Path], config: FinOpsConfig | None = None, *,
                      source: str = "focus-bulk", scope: str | None = None) -> tuple[BulkResult, Any]:  # fmt: skip
    """Aggregate files with :func:`aggregate_focus_files` and write the groups in one ledger batch.

    The groups go in as :class:`~finops_provider.core.ledger.KeyedRows` (no per-group record building),
    the row-path records and bad rows with them. The batch replaces its ``scope`` (default: the source name)
    over the days the files cover, so a re-delivered or restated export supersedes the previous one instead
    of adding to it.
    """
    from finops_provider.core.ledger import KeyedRows

    res = aggregate_focus_files(paths, config, source=source)
    t = time.perf_counter()
    ing = ledger.ingest([*res.slow_records, *res.bad_rows], source=source, scope=scope or source, window=res.window,
                        replace_window=res.window is not None, keyed=KeyedRows(GROUP_COLUMNS, res.rows))  # fmt: skip
    res.phases["ledger_write"] = time.perf_counter() - t
    return res, ing
