"""FOCUS file reader and writer (CSV and Parquet), streaming, exact.

Reading never loses a row silently: every row comes back either as a :class:`CostRecord` or as a
:class:`BadRow` naming the row number, the column and the fix.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from finops_provider.core.records import (
    COLUMNS,
    HEADER_ALIASES,
    CostRecord,
    Kind,
    RecordError,
    record_from_mapping,
)

log = logging.getLogger(__name__)

FOCUS_VERSION = "1.2"


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row that failed validation: where, which column, why and how to fix it."""

    row_number: int  # 1-based data row (header excluded)
    field: str
    reason: str
    raw: dict[str, Any]


def detect_format(path: str | Path) -> str:
    p = str(path).lower()
    if p.endswith((".parquet", ".pq")):
        return "parquet"
    if p.endswith((".csv", ".csv.gz", ".txt")):
        return "csv"
    raise ValueError(f"{path}: cannot tell the format from the name; use a .csv or .parquet file or pass fmt=")


def read_focus(
    path: str | Path, *, fmt: str | None = None, defaults: dict[str, Any] | None = None, batch_rows: int = 65_536
) -> Iterator[CostRecord | BadRow]:
    """Stream a FOCUS file as records and bad rows, in file order."""
    fmt = fmt or detect_format(path)
    if fmt == "csv":
        opener = _open_text(path)
        with opener as fh:
            yield from read_focus_csv(fh, defaults=defaults)
    elif fmt == "parquet":
        yield from read_focus_parquet(path, defaults=defaults, batch_rows=batch_rows)
    else:
        raise ValueError(f"unknown FOCUS format {fmt!r}; use csv or parquet")


def _open_text(path: str | Path) -> IO[str]:
    if str(path).endswith(".gz"):
        import gzip

        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _warn_unknown(header: Iterable[str], source: str) -> None:
    unknown = [h for h in header if h not in HEADER_ALIASES and h.lower() not in HEADER_ALIASES]
    if unknown:
        log.warning("%s: ignoring %d unknown column(s): %s", source, len(unknown), ", ".join(unknown[:20]))


def _convert(row: dict[str, Any], n: int, defaults: dict[str, Any] | None) -> CostRecord | BadRow:
    try:
        return record_from_mapping(row, defaults=defaults)
    except RecordError as e:
        return BadRow(n, e.field, e.message, _safe_raw(row))
    except Exception as e:  # never let one row stop the file
        return BadRow(n, "(row)", f"unreadable row: {type(e).__name__}: {e}", _safe_raw(row))


def _safe_raw(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in list(row.items())[:100]:
        key = str(k)[:100]
        if isinstance(v, str):
            out[key] = v[:500].encode("utf-8", "replace").decode("utf-8")
        elif isinstance(v, (int, float, bool)) or v is None:
            out[key] = v if not isinstance(v, float) else repr(v)
        else:
            out[key] = str(v)[:500]
    return out


def read_focus_csv(fh: IO[str], *, defaults: dict[str, Any] | None = None) -> Iterator[CostRecord | BadRow]:
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.lstrip("\ufeff").strip() for h in header]
    _warn_unknown(header, getattr(fh, "name", "csv"))
    required = {"BilledCost", "BillingCurrency", "ChargePeriodStart", "ChargePeriodEnd"}
    have = {HEADER_ALIASES.get(h.lower()) for h in header}
    missing = [r for r in sorted(required) if HEADER_ALIASES[r.lower()] not in have]
    if missing:
        raise RecordError(missing[0], f"required column missing from the file header (missing: {', '.join(missing)})")
    for n, values in enumerate(reader, start=1):
        if len(values) != len(header):
            yield BadRow(n, "(row)", f"has {len(values)} fields, the header has {len(header)}; fix the quoting", {})
            continue
        yield _convert(dict(zip(header, values, strict=True)), n, defaults)


def read_focus_parquet(
    path: str | Path, *, defaults: dict[str, Any] | None = None, batch_rows: int = 65_536
) -> Iterator[CostRecord | BadRow]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    _warn_unknown(pf.schema_arrow.names, str(path))
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows):
        for row in batch.to_pylist():
            n += 1
            yield _convert(row, n, defaults)


# ---------------------------------------------------------------------- writer
def _text(v: Any, kind: Kind) -> str:
    if v is None:
        return ""
    if kind in (Kind.MONEY, Kind.DECIMAL):
        return format(v, "f")
    if kind is Kind.TIME:
        u = v.astimezone(dt.UTC)  # keep sub-second precision when there is any (Parquet keeps microseconds too)
        return u.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if u.microsecond else "%Y-%m-%dT%H:%M:%SZ")
    if kind is Kind.TAGS:
        return json.dumps(v, ensure_ascii=False, sort_keys=True) if v else ""
    if kind is Kind.BOOL:
        return "true" if v else "false"
    return str(v)


def write_focus_csv(records: Iterable[CostRecord], out: str | Path | IO[str]) -> int:
    """Write FOCUS CSV (FOCUS column names, ISO-8601 UTC times, exact decimals). Returns rows written."""
    close = False
    if isinstance(out, (str, Path)):
        fh: IO[str] = open(out, "w", encoding="utf-8", newline="")
        close = True
    else:
        fh = out
    try:
        w = csv.writer(fh)
        w.writerow([c.focus for c in COLUMNS])
        n = 0
        for r in records:
            w.writerow([_text(getattr(r, c.attr), c.kind) for c in COLUMNS])
            n += 1
        return n
    finally:
        if close:
            fh.close()


def arrow_schema() -> Any:
    import pyarrow as pa

    types = {
        Kind.MONEY: pa.decimal128(38, 16),
        Kind.DECIMAL: pa.decimal128(38, 16),
        Kind.TIME: pa.timestamp("us", tz="UTC"),
        Kind.TEXT: pa.string(),
        Kind.TAGS: pa.string(),
        Kind.BOOL: pa.bool_(),
    }
    return pa.schema([pa.field(c.focus, types[c.kind]) for c in COLUMNS])


def write_focus_parquet(records: Iterable[CostRecord], out: str | Path, *, batch_rows: int = 65_536) -> int:
    """Write FOCUS Parquet with decimal128(38, 16) money (exact) and UTC timestamps."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema()
    n = 0
    with pq.ParquetWriter(str(out), schema) as writer:
        buf: list[CostRecord] = []

        def flush() -> None:
            cols: dict[str, list[Any]] = {c.focus: [] for c in COLUMNS}
            for r in buf:
                for c in COLUMNS:
                    v = getattr(r, c.attr)
                    if c.kind is Kind.TAGS:
                        v = json.dumps(v, ensure_ascii=False, sort_keys=True) if v else None
                    cols[c.focus].append(v)
            writer.write_table(pa.table(cols, schema=schema))
            buf.clear()

        for r in records:
            buf.append(r)
            n += 1
            if len(buf) >= batch_rows:
                flush()
        if buf:
            flush()
    return n


def write_focus(records: Iterable[CostRecord], out: str | Path, *, fmt: str | None = None) -> int:
    fmt = fmt or detect_format(out)
    if fmt == "csv":
        return write_focus_csv(records, out)
    if fmt == "parquet":
        return write_focus_parquet(records, out)
    raise ValueError(f"unknown FOCUS format {fmt!r}; use csv or parquet")


def records_to_csv_text(records: Iterable[CostRecord]) -> str:
    buf = io.StringIO()
    write_focus_csv(records, buf)
    return buf.getvalue()


def sum_column(records: Iterable[CostRecord], attr: str = "billed_cost") -> dict[str, Decimal]:
    """Exact per-currency sum of a money column (None counts as zero)."""
    from finops_provider.core.money import MoneyBag

    bag = MoneyBag()
    for r in records:
        v = getattr(r, attr)
        if v is not None:
            bag.add_raw(v, r.billing_currency)
    return {m.currency: m.amount for m in bag.items()}
