"""The cost ledger: SQLAlchemy Core over SQLite (default, WAL) or PostgreSQL.

One write path (:meth:`Ledger.ingest`) for every source. Rows are keyed by a stable natural key
(source + line-item id or dimension hash + charge period + occurrence within the batch), so:

* ingesting the same data again replaces, never adds;
* a restated row (same identity, different values) supersedes the old one; the change goes to the audit table;
* two identical rows in one file are two charges (occurrence 0 and 1), and re-ingesting the file still
  yields exactly those two;
* with ``replace_window=True`` a collector that re-pulls a whole window also removes rows that vanished
  from the source (restated bills), again with an audit entry;
* rows that fail validation go to the quarantine table with the reason, and every valid row still lands.

Bulk aggregates (:mod:`finops_provider.core.bulk`) arrive already keyed (:class:`KeyedRows`): their identity is
the group key, computed where the groups are, and they take the same batch, upsert, audit and window-replace
steps as records in the same :meth:`Ledger.ingest` call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import operator
import os
import threading
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from finops_provider.core.focus import BadRow
from finops_provider.core.money import MONEY_CONTEXT, MoneyBag
from finops_provider.core.records import COLUMNS, COST_BASES, CostRecord, Kind
from finops_provider.core.schema import (
    SCHEMA_REVISION,
    ExactDecimal,
    breach,
    cost_line,
    cost_line_audit,
    ingest_batch,
    metadata,
    quarantine,
)

log = logging.getLogger(__name__)

_RECORD_ATTRS = tuple(c.attr for c in COLUMNS)
_TAG_ATTRS = frozenset(c.attr for c in COLUMNS if c.kind is Kind.TAGS)
_CHUNK = 2_000


def finops_home() -> Path:
    """``$FINOPS_HOME`` or ``~/.finops``; created on first use."""
    p = Path(os.environ.get("FINOPS_HOME") or Path.home() / ".finops").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p


def default_ledger_url() -> str:
    """``$FINOPS_LEDGER_URL`` or a SQLite file under :func:`finops_home`."""
    return os.environ.get("FINOPS_LEDGER_URL") or f"sqlite:///{finops_home() / 'ledger.db'}"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and errors."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


class _DecimalSum:
    """SQLite aggregate ``finops_decimal_sum(x)``: the exact sum of decimal text, as text (SQLite's own ``SUM``
    converts to float). Same arithmetic as :class:`MoneyBag` (``0 + a + b ...`` in ``MONEY_CONTEXT``)."""

    def __init__(self) -> None:
        self.total: Decimal | None = None

    def step(self, value: Any) -> None:
        if value is not None:
            self.total = MONEY_CONTEXT.add(Decimal(0) if self.total is None else self.total, Decimal(str(value)))

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


def make_engine(url: str) -> Engine:
    u = sa.engine.make_url(url)
    if u.drivername.startswith("sqlite"):
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(u, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()
            dbapi_conn.create_aggregate("finops_decimal_sum", 1, _DecimalSum)

        return engine
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return sa.create_engine(u, pool_pre_ping=True)


#: One engine per ledger URL per process: its connection pool and SQLAlchemy's compiled-statement cache (kept
#: per engine) then survive from one :class:`Ledger` to the next, for example from one callback to the next.
_ENGINES: OrderedDict[str, Engine] = OrderedDict()
_MAX_ENGINES = 8
#: Ledger URLs this process has seen at :data:`SCHEMA_REVISION`: opened again, they skip the schema check.
_AT_HEAD: set[str] = set()
_ENGINES_LOCK = threading.Lock()


def _is_memory(url: str) -> bool:
    u = sa.engine.make_url(url)
    return u.drivername.startswith("sqlite") and u.database in (None, "", ":memory:")


def shared_engine(url: str) -> Engine:
    """The process's engine for ``url``, created on first use; the least recently used one beyond
    :data:`_MAX_ENGINES` is disposed. An in-memory SQLite URL gets a new engine (a new, empty database) each time."""
    if _is_memory(url):
        return make_engine(url)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is not None:
            _ENGINES.move_to_end(url)
            return engine
        engine = _ENGINES[url] = make_engine(url)

        @sa.event.listens_for(engine, "handle_error")
        def _recheck_schema(_ctx: Any) -> None:  # tables dropped or database replaced: check again on next open
            _AT_HEAD.discard(url)

        evicted = []
        while len(_ENGINES) > _MAX_ENGINES:
            old_url, old = _ENGINES.popitem(last=False)
            _AT_HEAD.discard(old_url)
            evicted.append(old)
    for old in evicted:  # a Ledger still using it keeps its checked-out connection until it returns it
        old.dispose()
    return engine


def dispose_engines() -> None:
    """Close the pooled ledger connections of this process (engines are made again on next use)."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
        _AT_HEAD.clear()
    for engine in engines:
        engine.dispose()


def _forget_engines_in_child() -> None:
    """After ``fork``: the parent's pooled connections are the parent's, never used (or closed) by the child."""
    global _ENGINES_LOCK
    _ENGINES_LOCK = threading.Lock()
    for engine in _ENGINES.values():
        engine.dispose(close=False)
    _ENGINES.clear()
    _AT_HEAD.clear()


os.register_at_fork(after_in_child=_forget_engines_in_child)


@dataclass
class IngestResult:
    """What one :meth:`Ledger.ingest` call did. Money totals are of the rows received, per currency."""

    batch_id: str
    rows_in: int = 0
    inserted: int = 0
    restated: int = 0
    unchanged: int = 0
    removed: int = 0
    quarantined: int = 0
    totals: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------ pre-encoded writes (hot paths)
#: compiled SQL text and, for positional paramstyles (SQLite), the parameter order
RawSQL = tuple[str, tuple[str, ...] | None]


def untyped(table: sa.Table, *, skip: Sequence[str] = ()) -> sa.Table:
    """``table`` without per-value bind processing: for rows encoded beforehand as the typed columns would."""
    cols = [sa.Column(c.name, sa.types.NullType()) for c in table.columns if c.name not in skip]
    return sa.Table(table.name, sa.MetaData(), *cols)


def compile_raw(stmt: Any, dialect: Any, column_keys: Sequence[str] | None = None) -> RawSQL:
    """Compile ``stmt`` once for :func:`execute_raw`."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None)
    order = tuple(compiled.positiontup) if compiled.positional and compiled.positiontup else None
    return str(compiled), order


def execute_raw(conn: Connection, raw: RawSQL, rows: Sequence[Mapping[str, Any]]) -> None:
    """The driver's executemany on pre-encoded rows (no SQLAlchemy per-value processing)."""
    sql, order = raw
    if order is None:
        conn.exec_driver_sql(sql, list(rows))  # type: ignore[arg-type]
    elif len(order) == 1:
        conn.exec_driver_sql(sql, [(r[order[0]],) for r in rows])
    else:
        conn.exec_driver_sql(sql, list(map(operator.itemgetter(*order), rows)))


_WRITE_TABLE = untyped(cost_line, skip=("id",))


#: compiled upserts of every Ledger in the process: (dialect, paramstyle, *bound columns) -> (SQL, parameter order)
_UPSERT_SQL: dict[tuple[Any, ...], RawSQL] = {}


def _sqlite_time(v: dt.datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (naive UTC), so range filters compare correctly."""
    if v.tzinfo is not dt.UTC:  # records are UTC already: then no conversion and no strftime
        v = v.astimezone(dt.UTC)
    return v.isoformat(" ", "microseconds")[:26]  # without "+00:00" (cheaper than replace(tzinfo=None) first)


def sqlite_time_text(canonical: str) -> str:
    """:func:`_sqlite_time` of a time given as valid canonical text (:func:`~.records.is_canonical_time`), by
    slicing: ``isoformat`` of an aware datetime costs ~2 us here, once per stream event."""
    if len(canonical) == 27:
        return f"{canonical[:10]} {canonical[11:26]}"
    return f"{canonical[:10]} {canonical[11:19]}.000000"


_GET_ALL = operator.attrgetter(*_RECORD_ATTRS)
_DEC_IDX = tuple(i for i, c in enumerate(COLUMNS) if c.kind in (Kind.MONEY, Kind.DECIMAL))
_TIME_IDX = tuple(i for i, c in enumerate(COLUMNS) if c.kind is Kind.TIME)
_TAG_IDX = tuple(i for i, c in enumerate(COLUMNS) if c.kind is Kind.TAGS)
_BOOL_IDX = tuple(i for i, c in enumerate(COLUMNS) if c.kind is Kind.BOOL)


def _record_to_row(r: CostRecord, sqlite: bool) -> dict[str, Any]:
    """Encode a record for :data:`_WRITE_TABLE` (same encoding as the typed columns in schema.py)."""
    vals = list(_GET_ALL(r))
    for i in _TAG_IDX:
        v = vals[i]
        vals[i] = json.dumps(v, sort_keys=True, ensure_ascii=False) if v else None
    for i in _BOOL_IDX:
        vals[i] = bool(vals[i])
    if sqlite:
        for i in _DEC_IDX:
            v = vals[i]
            if v is not None:
                vals[i] = format(v, "f")
        for i in _TIME_IDX:
            v = vals[i]
            if v is not None:
                vals[i] = _sqlite_time(v)
    return dict(zip(_RECORD_ATTRS, vals, strict=True))


@dataclass(frozen=True)
class KeyedRows:
    """Rows that arrive with their identity already computed (bulk aggregates, one row per group).

    :param columns: record attribute names (:data:`~finops_provider.core.records.COLUMNS`) plus ``natural_key``
        and ``content_hash``; record attributes left out take the :class:`CostRecord` defaults.
    :param rows: value tuples in ``columns`` order, typed as on a record (Decimal, tz-aware datetime, str, dict).
        Natural keys must be unique within the batch; the caller guarantees that equal keys mean the same charge.
    """

    columns: Sequence[str]
    rows: Iterable[Sequence[Any]]


#: the stored identity, content hash and audited values of the rows with the given natural keys (one statement,
#: compiled once; the key list is expanded at execution instead of coerced key by key)
_EXISTING = sa.select(
    cost_line.c.natural_key,
    cost_line.c.content_hash,
    cost_line.c.billed_cost,
    cost_line.c.effective_cost,
    cost_line.c.billing_currency,
).where(cost_line.c.natural_key.in_(sa.bindparam("keys", expanding=True)))

_KEYED_EXTRA = ("natural_key", "content_hash")
_KEYED_REQUIRED = ("billed_cost", "billing_currency", "charge_period_start", "charge_period_end", *_KEYED_EXTRA)


def _keyed_encoder(columns: Sequence[str], sqlite: bool) -> Callable[[Sequence[Any]], dict[str, Any]]:
    """Encode one :class:`KeyedRows` tuple for :data:`_WRITE_TABLE`, exactly as :func:`_record_to_row` would.

    Columns that are left out and default to NULL are not bound at all: the upsert sets every column from
    ``excluded``, which holds NULL for them, so the stored row is the same and the driver binds half as much.
    """
    cols = tuple(columns)
    unknown = sorted(set(cols) - set(_RECORD_ATTRS) - set(_KEYED_EXTRA))
    missing = [c for c in _KEYED_REQUIRED if c not in cols]
    if unknown or missing or len(set(cols)) != len(cols):
        raise ValueError(f"KeyedRows columns: unknown {unknown}, missing {missing}, or repeated, in {cols}")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    defaults = _record_to_row(CostRecord(Decimal(0), "", epoch, epoch), sqlite)
    base = {a: v for a, v in defaults.items() if a not in cols and v is not None}
    kinds = {c.attr: c.kind for c in COLUMNS if c.attr in cols}
    tag_attrs = [a for a, k in kinds.items() if k is Kind.TAGS]
    bool_attrs = [a for a, k in kinds.items() if k is Kind.BOOL]
    dec_attrs = [a for a, k in kinds.items() if sqlite and k in (Kind.MONEY, Kind.DECIMAL)]
    time_attrs = [a for a, k in kinds.items() if sqlite and k is Kind.TIME]
    times: dict[dt.datetime, str] = {}  # aggregates share a few distinct days

    def encode(values: Sequence[Any]) -> dict[str, Any]:
        row = base.copy()
        row.update(zip(cols, values, strict=True))
        for a in tag_attrs:
            v = row[a]
            row[a] = json.dumps(v, sort_keys=True, ensure_ascii=False) if v else None
        for a in bool_attrs:
            row[a] = bool(row[a])
        for a in dec_attrs:
            v = row[a]
            if v is not None:
                row[a] = format(v, "f")
        for a in time_attrs:
            v = row[a]
            if v is not None:
                t = times.get(v)
                if t is None:
                    t = _sqlite_time(v)
                    if len(times) < 10_000:
                        times[v] = t
                row[a] = t
        return row

    return encode


def _row_to_record(m: Any) -> CostRecord:
    kw = {a: m[a] for a in _RECORD_ATTRS}
    for a in _TAG_ATTRS:
        kw[a] = json.loads(kw[a]) if kw[a] else {}
    kw["x_provisional"] = bool(kw["x_provisional"])
    return CostRecord(**kw)


class Ledger:
    """The FinOps cost ledger.

    :param url: SQLAlchemy URL; default :func:`default_ledger_url` (SQLite under ``$FINOPS_HOME``).
    :param migrate: bring the schema to the current revision on open (cheap when already current).
    """

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = url or default_ledger_url()
        self._own_engine = _is_memory(self.url)  # a private in-memory database, closed with this Ledger
        self.engine = shared_engine(self.url)
        self.dialect = self.engine.dialect.name
        self._claim_stmt: Any = None  # claim_breaches' INSERT, built once (then compiled once per engine)
        if migrate:
            self.migrate()

    def __repr__(self) -> str:
        return f"Ledger({redact_url(self.url)})"

    def close(self) -> None:
        """Give the ledger back. The engine is shared per URL (:func:`shared_engine`) and stays open: the next
        Ledger of this URL reuses its connections and compiled statements; :func:`dispose_engines` closes them."""
        if self._own_engine:
            self.engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- schema
    def schema_revision(self) -> str | None:
        insp = sa.inspect(self.engine)
        if not insp.has_table("finops_alembic_version"):
            return None
        with self.engine.connect() as c:
            return c.execute(sa.text("SELECT version_num FROM finops_alembic_version")).scalar()

    def migrate(self) -> None:
        """Run Alembic migrations up to head (skipped when the database is already at head; not checked again
        in this process once seen at head, until :meth:`reset` or a failed write)."""
        if self.url in _AT_HEAD:
            return
        if self.schema_revision() == SCHEMA_REVISION:
            self._at_head()
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":  # one migrator at a time
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(724521)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("ledger %s migrated to schema %s", redact_url(self.url), SCHEMA_REVISION)
        self._at_head()

    def _at_head(self) -> None:
        if not self._own_engine:
            _AT_HEAD.add(self.url)

    # ----------------------------------------------------------------- write
    def _insert(self) -> Any:
        """The dialect's INSERT with ON CONFLICT support (PostgreSQL and SQLite share the API)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert
        from sqlalchemy.dialects import sqlite

        return sqlite.insert

    def ingest(
        self,
        items: Iterable[CostRecord | BadRow],
        *,
        source: str,
        scope: str | None = None,
        window: tuple[dt.datetime, dt.datetime] | None = None,
        replace_window: bool = False,
        batch_id: str | None = None,
        connection: Connection | None = None,
        keyed: KeyedRows | None = None,
    ) -> IngestResult:
        """Upsert records and quarantine bad rows, atomically, as one batch.

        :param items: records and :class:`BadRow` s (bad rows go to quarantine).
        :param source: short source name, for example ``aws-ce`` or ``focus-file``.
        :param scope: the collection this batch is complete for (default: ``source``); with
            ``replace_window`` rows of this scope inside ``window`` that are not in the batch are removed.
        :param window: ``[start, end)`` of charge periods this batch covers.
        :param replace_window: remove rows of ``scope`` in ``window`` that this batch no longer has.
        :param batch_id: idempotency / audit handle; generated when not given.
        :param connection: run inside this open transaction (the caller commits or rolls back), so the
            caller's own bookkeeping (for example stream checkpoints) is atomic with these rows.
        :param keyed: pre-keyed rows (bulk aggregates) written in the same batch after ``items``; they skip the
            per-record fingerprinting and encoding but are upserted, audited and counted the same way.
        :return: counts and per-currency totals of the valid rows received.
        """
        if replace_window and window is None:
            raise ValueError("replace_window=True needs window=(start, end)")
        scope = scope or source
        batch_id = batch_id or uuid.uuid4().hex
        now = dt.datetime.now(dt.UTC)
        res = IngestResult(batch_id=batch_id)
        bag = MoneyBag()
        seen: Counter[str] = Counter()
        keys_in_batch: set[str] = set()
        insert = self._insert()
        sqlite = self.dialect == "sqlite"
        now_w = _sqlite_time(now) if sqlite else now
        with contextlib.nullcontext(connection) if connection is not None else self.engine.begin() as conn:
            conn.execute(
                ingest_batch.insert().values(
                    batch_id=batch_id,
                    source=source,
                    collection_scope=scope,
                    started_at=now,
                    window_start=window[0] if window else None,
                    window_end=window[1] if window else None,
                )
            )
            chunk: list[dict[str, Any]] = []
            bad: list[dict[str, Any]] = []
            for item in items:
                res.rows_in += 1
                if isinstance(item, BadRow):
                    bad.append(
                        {
                            "batch_id": batch_id,
                            "source": source,
                            "row_number": item.row_number,
                            "field": item.field[:100],
                            "reason": item.reason,
                            "raw": json.dumps(item.raw, ensure_ascii=False, default=str)[:20_000],
                            "at": now,
                        }
                    )
                    if len(bad) >= _CHUNK:
                        conn.execute(quarantine.insert(), bad)
                        res.quarantined += len(bad)
                        bad = []
                    continue
                ident, content = item.fingerprints()
                occ = seen[ident]
                seen[ident] += 1
                nk = f"{ident}:{occ}"
                keys_in_batch.add(nk)
                bag.add_raw(item.billed_cost, item.billing_currency)
                row = _record_to_row(item, sqlite)
                row.update(
                    natural_key=nk,
                    collection_scope=scope,
                    content_hash=content,
                    batch_id=batch_id,
                    updated_at=now_w,
                )
                chunk.append(row)
                if len(chunk) >= _CHUNK:
                    self._upsert_chunk(conn, insert, chunk, res, batch_id, now)
                    chunk = []
            if keyed is not None:
                encode_row = _keyed_encoder(keyed.columns, sqlite)
                i_billed = list(keyed.columns).index("billed_cost")
                i_cur = list(keyed.columns).index("billing_currency")
                keyed_totals: dict[str, Decimal] = {}  # MoneyBag's arithmetic, without a context switch per row
                for values in keyed.rows:
                    res.rows_in += 1
                    cur = values[i_cur]
                    keyed_totals[cur] = MONEY_CONTEXT.add(keyed_totals.get(cur, Decimal(0)), values[i_billed])
                    row = encode_row(values)
                    nk = row["natural_key"]
                    if nk in keys_in_batch:
                        raise ValueError(f"KeyedRows: natural key {nk} appears twice in one batch")
                    keys_in_batch.add(nk)
                    row.update(collection_scope=scope, batch_id=batch_id, updated_at=now_w)
                    chunk.append(row)
                    if len(chunk) >= _CHUNK:
                        self._upsert_chunk(conn, insert, chunk, res, batch_id, now)
                        chunk = []
                for cur, total in keyed_totals.items():
                    bag.add_raw(total, cur)
            if chunk:
                self._upsert_chunk(conn, insert, chunk, res, batch_id, now)
            if bad:
                conn.execute(quarantine.insert(), bad)
                res.quarantined += len(bad)
            if replace_window and window is not None:
                res.removed = self._remove_vanished(conn, scope, window, keys_in_batch, batch_id, now)
            conn.execute(
                ingest_batch.update()
                .where(ingest_batch.c.batch_id == batch_id)
                .values(
                    finished_at=dt.datetime.now(dt.UTC),
                    rows_in=res.rows_in,
                    inserted=res.inserted,
                    restated=res.restated,
                    unchanged=res.unchanged,
                    removed=res.removed,
                    quarantined=res.quarantined,
                )
            )
        res.totals = bag.to_json()
        log.info(
            "ledger batch %s (%s): %d in, %d new, %d restated, %d unchanged, %d removed, %d quarantined",
            batch_id,
            source,
            res.rows_in,
            res.inserted,
            res.restated,
            res.unchanged,
            res.removed,
            res.quarantined,
        )
        return res

    def _upsert_chunk(
        self, conn: Connection, insert: Any, chunk: list[dict[str, Any]], res: IngestResult, batch_id: str, now: Any
    ) -> None:
        keys = [r["natural_key"] for r in chunk]
        existing = {row.natural_key: row for row in conn.execute(_EXISTING, {"keys": keys})}
        writes: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        for r in chunk:
            old = existing.get(r["natural_key"])
            if old is None:
                res.inserted += 1
                writes.append(r)
            elif old.content_hash != r["content_hash"]:
                res.restated += 1
                writes.append(r)
                audits.append(
                    {
                        "natural_key": r["natural_key"],
                        "action": "restated",
                        "batch_id": batch_id,
                        "at": now,
                        "billing_currency": r["billing_currency"],
                        "old_billed_cost": old.billed_cost,
                        "new_billed_cost": Decimal(r["billed_cost"]),
                        "old_effective_cost": old.effective_cost,
                        "new_effective_cost": None if r["effective_cost"] is None else Decimal(r["effective_cost"]),
                        "old_content_hash": old.content_hash,
                        "new_content_hash": r["content_hash"],
                    }
                )
            else:
                res.unchanged += 1
        if writes:  # rows are pre-encoded: the driver's executemany without per-value processing
            execute_raw(conn, self._upsert_sql(insert, list(writes[0])), writes)
        if audits:
            conn.execute(cost_line_audit.insert(), audits)

    def _upsert_sql(self, insert: Any, keys: list[str]) -> RawSQL:
        """The compiled upsert (cached per process): SQL text and, for positional paramstyles, the parameter order."""
        dialect = self.engine.dialect
        cache_key = (type(dialect), dialect.paramstyle, *keys)
        hit = _UPSERT_SQL.get(cache_key)
        if hit is not None:
            return hit
        stmt = insert(_WRITE_TABLE)
        update_cols = {c.name: stmt.excluded[c.name] for c in _WRITE_TABLE.columns if c.name != "natural_key"}
        stmt = stmt.on_conflict_do_update(
            index_elements=["natural_key"],
            set_=update_cols,
            where=_WRITE_TABLE.c.content_hash != stmt.excluded.content_hash,
        )
        out = compile_raw(stmt, self.engine.dialect, keys)
        _UPSERT_SQL[cache_key] = out
        return out

    def _remove_vanished(
        self,
        conn: Connection,
        scope: str,
        window: tuple[dt.datetime, dt.datetime],
        keep: set[str],
        batch_id: str,
        now: Any,
    ) -> int:
        # keys first (cheap), the audited values only for the rows that go; rows this batch wrote are kept anyway
        in_window = sa.select(cost_line.c.natural_key).where(
            cost_line.c.collection_scope == scope,
            cost_line.c.charge_period_start >= window[0],
            cost_line.c.charge_period_start < window[1],
            cost_line.c.batch_id != batch_id,
        )
        gone_keys = [k for (k,) in conn.execute(in_window) if k not in keep]
        gone: list[Any] = []
        for i in range(0, len(gone_keys), _CHUNK):
            gone += conn.execute(
                sa.select(
                    cost_line.c.natural_key,
                    cost_line.c.content_hash,
                    cost_line.c.billed_cost,
                    cost_line.c.effective_cost,
                    cost_line.c.billing_currency,
                ).where(cost_line.c.natural_key.in_(gone_keys[i : i + _CHUNK]))
            ).all()
        for i in range(0, len(gone), _CHUNK):
            part = gone[i : i + _CHUNK]
            conn.execute(
                cost_line_audit.insert(),
                [
                    {
                        "natural_key": g.natural_key,
                        "action": "removed",
                        "batch_id": batch_id,
                        "at": now,
                        "billing_currency": g.billing_currency,
                        "old_billed_cost": g.billed_cost,
                        "new_billed_cost": None,
                        "old_effective_cost": g.effective_cost,
                        "new_effective_cost": None,
                        "old_content_hash": g.content_hash,
                        "new_content_hash": None,
                    }
                    for g in part
                ],
            )
            conn.execute(cost_line.delete().where(cost_line.c.natural_key.in_([g.natural_key for g in part])))
        return len(gone)

    # ------------------------------------------------------------------ read
    def _where(
        self,
        *,
        start: dt.datetime | None = None,
        end: dt.datetime | None = None,
        cost_kind: str | None = None,
        source: str | None = None,
        scope: str | None = None,
        dag_id: str | None = None,
        task_id: str | None = None,
        run_id: str | None = None,
        job_id: str | None = None,
        team: str | None = None,
        cost_center: str | None = None,
        platform: str | None = None,
        service: str | None = None,
        currency: str | None = None,
    ) -> list[Any]:
        w: list[Any] = []
        if start is not None:
            w.append(cost_line.c.charge_period_start >= start)
        if end is not None:
            w.append(cost_line.c.charge_period_start < end)
        for col, val in (
            (cost_line.c.x_cost_kind, cost_kind),
            (cost_line.c.x_source, source),
            (cost_line.c.collection_scope, scope),
            (cost_line.c.x_dag_id, dag_id),
            (cost_line.c.x_task_id, task_id),
            (cost_line.c.x_run_id, run_id),
            (cost_line.c.x_job_id, job_id),
            (cost_line.c.x_team, team),
            (cost_line.c.x_cost_center, cost_center),
            (cost_line.c.service_name, service),
            (cost_line.c.billing_currency, currency),
        ):
            if val is not None:
                w.append(col == val)
        if platform is not None:  # same rule as the aggregation's "platform" dimension
            w.append(
                sa.or_(
                    cost_line.c.x_platform == platform,
                    sa.and_(cost_line.c.x_platform.is_(None), cost_line.c.provider_name == platform),
                )
            )
        return w

    def records(self, **filters: Any) -> Iterator[CostRecord]:
        """Stream the stored records (ordered by id) matching the filters."""
        q = sa.select(*[cost_line.c[a] for a in _RECORD_ATTRS]).where(*self._where(**filters)).order_by(cost_line.c.id)
        with self.engine.connect() as conn:
            for m in conn.execution_options(yield_per=5_000).execute(q).mappings():
                yield _row_to_record(m)

    def rows(self, columns: Sequence[str], **filters: Any) -> Iterator[Sequence[Any]]:
        """Stream selected columns (tags come back as dicts)."""
        q = sa.select(*[cost_line.c[a] for a in columns]).where(*self._where(**filters))
        tag_idx = [i for i, a in enumerate(columns) if a in _TAG_ATTRS]
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=10_000).execute(q):
                if tag_idx:
                    vals = list(row)
                    for i in tag_idx:
                        vals[i] = json.loads(vals[i]) if vals[i] else {}
                    yield vals
                else:
                    yield row

    def _exact_sum(self, column: Any) -> Any:
        """An exact SQL sum of a money column, or None when the dialect has none (then Python sums the rows)."""
        if self.dialect == "sqlite":
            return sa.func.finops_decimal_sum(column, type_=ExactDecimal())
        if self.dialect == "postgresql":
            return sa.func.sum(column)  # NUMERIC: exact
        return None

    def totals(self, basis: str = "billed", **filters: Any) -> MoneyBag:
        """Exact per-currency total of a cost basis over the matching rows (summed in the database)."""
        attr = COST_BASES[basis]
        bag = MoneyBag()
        total = self._exact_sum(cost_line.c[attr])
        if total is None:
            for amount, cur in self.rows([attr, "billing_currency"], **filters):
                if amount is not None:
                    bag.add_raw(amount, cur)
            return bag
        cur_col = cost_line.c.billing_currency
        q = sa.select(cur_col, total).where(*self._where(**filters)).group_by(cur_col)
        with self.engine.connect() as conn:
            for cur, amount in conn.execute(q):
                if amount is not None:
                    bag.add_raw(amount, cur)
        return bag

    def daily_totals(self, basis: str = "billed", *, currency: str, **filters: Any) -> dict[dt.date, Decimal]:
        """Exact total of a cost basis in ``currency`` per UTC day of ``charge_period_start`` (days with spend)."""
        attr = COST_BASES[basis]
        out: dict[dt.date, Decimal] = {}
        total = self._exact_sum(cost_line.c[attr])
        if total is None:
            for amount, start in self.rows([attr, "charge_period_start"], currency=currency, **filters):
                if amount is not None:
                    d = start.astimezone(dt.UTC).date()
                    out[d] = MONEY_CONTEXT.add(out.get(d, Decimal(0)), amount)
            return out
        start_col = cost_line.c.charge_period_start
        if self.dialect == "sqlite":  # stored as naive UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'
            day = sa.func.substr(start_col, 1, 10)
        else:
            day = sa.func.date(sa.func.timezone("UTC", start_col))
        q = sa.select(day, total).where(*self._where(currency=currency, **filters)).group_by(day)
        with self.engine.connect() as conn:
            for d, amount in conn.execute(q):
                if amount is not None:
                    d = d if isinstance(d, dt.date) else dt.date.fromisoformat(d)
                    out[d] = MONEY_CONTEXT.add(Decimal(0), amount)
        return out

    def count(self, **filters: Any) -> int:
        with self.engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(cost_line).where(*self._where(**filters))
            return int(conn.execute(q).scalar_one())

    def quarantined(self, batch_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(quarantine).order_by(quarantine.c.id)
        if batch_id:
            q = q.where(quarantine.c.batch_id == batch_id)
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(q).mappings()]

    def audit_log(self, natural_key: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(cost_line_audit).order_by(cost_line_audit.c.id)
        if natural_key:
            q = q.where(cost_line_audit.c.natural_key == natural_key)
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(q).mappings()]

    def batches(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(m) for m in conn.execute(sa.select(ingest_batch).order_by(ingest_batch.c.started_at)).mappings()
            ]

    # -------------------------------------------------------- breach claims
    def claim_breach(self, b: Any) -> bool:
        """Atomically record a breach; True only for the first caller (the one that must act).

        :param b: a :class:`finops_provider.core.budgets.Breach`.
        """
        return b.dedupe_key in self.claim_breaches([b])

    def claim_breaches(
        self, bs: Sequence[Any], *, by: str | None = None, connection: sa.Connection | None = None
    ) -> set[str]:
        """:meth:`claim_breach` for several breaches in one transaction; returns the dedupe keys claimed here.

        :param by: recorded as ``claimed_by`` (a stream processor's ``stream:<consumer>``).
        :param connection: claim through this connection (not in a transaction; its own transaction commits
            here), e.g. a stream processor's kept one: on SQLite a write through another connection makes it
            drop its page cache.
        """
        if not bs:
            return set()
        insert = self._insert()
        now = dt.datetime.now(dt.UTC)
        claimed: set[str] = set()
        rows = [
            {
                "dedupe_key": b.dedupe_key,
                "budget": b.budget,
                "period_start": b.period_start,
                "threshold_pct": b.threshold_pct,
                "basis": b.basis,
                "currency": b.budget_amount.currency,
                "budget_amount": b.budget_amount.amount,
                "actual": b.actual.amount,
                "forecast": b.forecast.amount if b.forecast is not None else None,
                "actions": json.dumps(list(b.actions)),
                "first_seen": now,
                "claimed_by": by,
            }
            for b in {b.dedupe_key: b for b in bs}.values()  # one row per key (a multi-row INSERT needs that)
        ]
        # one statement for any number of rows (SQLAlchemy's "insertmanyvalues" sends them as multi-row INSERTs
        # and compiles it once); RETURNING names the rows inserted here, i.e. claimed here (not rowcount:
        # psycopg 3 reports -1 once SQLAlchemy has closed the cursor)
        stmt = self._claim_stmt
        if stmt is None:
            stmt = self._claim_stmt = (
                insert(breach).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(breach.c.dedupe_key)
            )
        with contextlib.ExitStack() as stack:
            conn = connection if connection is not None else stack.enter_context(self.engine.connect())
            with conn.begin():
                claimed.update(conn.execute(stmt, rows).scalars())
        return claimed

    def breaches(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(sa.select(breach).order_by(breach.c.first_seen)).mappings()]

    def reset(self) -> None:
        """Drop every finops table (tests and ``finops demo --fresh`` only)."""
        _AT_HEAD.discard(self.url)
        with self.engine.begin() as conn:
            metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS finops_alembic_version"))


def exact_total(values: Iterable[Decimal]) -> Decimal:
    from finops_provider.core.money import exact_sum

    return exact_sum(values)
