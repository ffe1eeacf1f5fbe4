"""The versioned cost-event schema (JSON, ``schema_version: 1``): build, encode and decode.

A cost event says "this work cost this much (or used this much), now". Producers: the task
callbacks/listener (run-time estimates), any service through :func:`cost_event` + a publisher
(:mod:`.kafka`, :mod:`.sources`). The stream engine decodes each message with :class:`EventDecoder` into the
ledger's one record type, :class:`~finops_provider.core.records.CostRecord`, or into a :class:`DeadLetter`
naming the field and the fix. Decoding never raises on bad input: a poison message becomes a dead letter.

Schema version 1::

    {
      "schema_version": 1,                       # required; other versions are dead-lettered
      "event_id": "airflow:etl:run-1:load:1",    # required, <= 200 chars: the idempotency key
      "event_time": "2026-10-23T10:15:00Z",      # required, ISO 8601 (naive = UTC): when the cost happened
      "end_time": "2026-10-23T10:20:00Z",        # optional, >= event_time (charge period end)
      "source": "airflow-listener",              # required: the producer
      "platform": "databricks",                  # optional; required to price usage
      "service": "Databricks Jobs Compute",      # optional
      "kind": "estimate",                        # estimate (run-time) | billed (truth); default estimate
      "attribution": {"dag_id": "...", "task_id": "...", "run_id": "...", "job_id": "...",
                      "team": "...", "cost_center": "...", "tags": {"env": "prod"}},     # all optional
      "cost":  {"amount": "12.50", "currency": "USD"},                     # either a cost ...
      "usage": {"quantity": "3.5", "unit": "DBU", "sku": "JOBS_COMPUTE", "region": "us-east-1"}
    }                                                                      # ... or usage priced by the rate card

Amounts are decimal strings (JSON numbers are accepted and parsed as Decimal, never float); negative
amounts are credits. Unknown keys are ignored (additive changes stay version 1).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import msgspec

from finops_provider.core.allocation import Attributor
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.money import MoneyError, check_currency, to_decimal
from finops_provider.core.pricing import PriceNotFoundError, RateCard
from finops_provider.core.records import (
    MAX_TAGS,
    CostRecord,
    RecordError,
    check_magnitude,
    is_canonical_time,
    is_utf8,
    parse_time,
)
from finops_provider.streaming.fold import group_part

SCHEMA_VERSION = 1
#: messages larger than this are dead-lettered unread
DEFAULT_MAX_BYTES = 64 * 1024
#: events further than this in the future (producer clock skew) are dead-lettered: they would move the watermark
DEFAULT_MAX_FUTURE = dt.timedelta(hours=1)
KINDS = ("estimate", "billed")
_ATTRIBUTION = ("dag_id", "task_id", "run_id", "job_id", "team", "cost_center")
_MAX_ID = 200
_MAX_TEXT = 250
_RAW_KEEP = 4096


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the stream could not use: ``field`` names what is wrong, ``reason`` says the fix."""

    field: str
    reason: str
    raw: str
    size: int
    position: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "size": self.size, "position": self.position}


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1.2 us more to build, once per event
class StreamEvent:
    """A decoded event (read-only): the ledger record (``x_line_item_id`` = event id) and who produced it."""

    record: CostRecord
    producer: str
    position: str = ""
    event_id: str = ""  # = record.x_line_item_id; a field, not a property: the runner reads it ~10 times an event
    #: the record's fold group apart from the hour (:func:`.fold.group_key`), when the decoder knows it already
    group: tuple[Any, ...] | None = None
    raw: bytes | str = b""  # the message as received
    #: ``event_time`` as sent when it is canonical (``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``), else ``None``
    time_text: str | None = None

    def __post_init__(self) -> None:
        if not self.event_id:
            self.event_id = self.record.x_line_item_id or ""


class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


#: msgspec reads standard JSON 6x faster than ``json.loads`` with the same result (numbers with a fraction or an
#: exponent as exact Decimals, integers as ints, the last of duplicate keys); for anything it refuses (NaN,
#: invalid UTF-8, escaped lone surrogates, truncation) ``decode`` falls back to ``json.loads`` for the message.
_FAST_JSON = msgspec.json.Decoder(float_hook=Decimal)

_FIELDS = tuple(f.name for f in fields(CostRecord))
#: what a cached template varies per event; everything else about the record follows from the template's key
_PER_EVENT_FIELDS = (
    "billed_cost",
    "effective_cost",
    "charge_period_start",
    "charge_period_end",
    "charge_category",
    "pricing_quantity",
    "consumed_quantity",
    "x_line_item_id",
    "tags",
)
_PER_EVENT = frozenset(_PER_EVENT_FIELDS)
_I_BILLED, _I_EFFECTIVE, _I_START, _I_END, _I_CATEGORY, _I_PQ, _I_CQ, _I_ID, _I_TAGS = map(
    _FIELDS.index, _PER_EVENT_FIELDS
)
_MAX_TEMPLATES = 10_000


@dataclass(frozen=True, slots=True)
class _Template:
    """An attributed record for events that differ only in id, times and amounts (:meth:`EventDecoder._record`)."""

    values: tuple[Any, ...]  # every CostRecord field, in order
    groups: tuple[tuple[Any, ...], tuple[Any, ...]]  # the fold group (apart from the hour): usage, credit
    tags: dict[str, str]
    usage: bool  # events carry a usage quantity


def _no_constant(name: str) -> Any:
    raise _Bad("payload", f"{name} is not a number; amounts must be finite decimals")


def _text(obj: Mapping[str, Any], key: str, *, required: bool = False, limit: int = _MAX_TEXT) -> str | None:
    v = obj.get(key)
    if type(v) is str and 0 < len(v) <= limit and v.isascii():  # the common case: short ASCII text
        return v
    if v is None or v == "":
        if required:
            raise _Bad(key, f"missing; give {key} as a non-empty string")
        return None
    if not isinstance(v, str):
        raise _Bad(key, f"expected a string, got {type(v).__name__}")
    if len(v) > limit:
        raise _Bad(key, f"{len(v)} characters is longer than the {limit} allowed")
    if not is_utf8(v):
        raise _Bad(key, "is not valid UTF-8 text (a lone surrogate such as \\udcff); send UTF-8 strings")
    return v


def _dec(v: Any, field: str) -> Decimal:
    try:
        d = to_decimal(v, field_name=field)
        check_magnitude(d, field)
    except (MoneyError, RecordError) as e:
        raise _Bad(field, str(e).split(": ", 1)[-1]) from None
    return d


def _time(v: Any, field: str) -> dt.datetime:
    if v is None:
        raise _Bad(field, "missing; give an ISO 8601 timestamp such as 2026-10-23T10:15:00Z")
    try:
        return parse_time(v, field)
    except RecordError as e:
        raise _Bad(field, e.message) from None


def _tags(v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise _Bad("attribution.tags", 'must be a JSON object such as {"env": "prod"}')
    if len(v) > MAX_TAGS:
        raise _Bad("attribution.tags", f"{len(v)} tags is more than the {MAX_TAGS} allowed")
    out: dict[str, str] = {}
    for k, val in v.items():
        s = "" if val is None else val if isinstance(val, str) else json.dumps(val, default=str)
        if len(k) > 256 or len(s) > 1024:
            raise _Bad("attribution.tags", f"tag {k[:30]!r} is too long (keys <= 256, values <= 1024 characters)")
        if not (is_utf8(str(k)) and is_utf8(s)):
            raise _Bad("attribution.tags", f"tag {k[:30]!r} is not valid UTF-8 text; send UTF-8 strings")
        out[str(k)] = s
    return out


class EventDecoder:
    """Bytes -> :class:`StreamEvent` or :class:`DeadLetter`, validated, attributed and priced.

    :param config: the FinOps config (attribution mappings: DAG -> team -> cost center).
    :param rate_card: prices usage events (default: the shipped cards plus the config's overrides).
    :param max_bytes: larger messages are dead-lettered unread.
    :param max_future: events this far ahead of ``clock()`` are dead-lettered (``None``: no check).
    :param clock: wall clock (UTC) for the future check.
    """

    def __init__(
        self,
        config: FinOpsConfig | None = None,
        rate_card: RateCard | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_future: dt.timedelta | None = DEFAULT_MAX_FUTURE,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.config = config or FinOpsConfig()
        self._rate_card = rate_card
        self.attributor = Attributor(self.config)
        self.max_bytes = max_bytes
        self.max_future = max_future
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._prices: dict[tuple[str, str, str | None, dt.date], Any] = {}
        self._templates: dict[tuple[Any, ...], _Template] = {}

    @property
    def rate_card(self) -> RateCard:
        if self._rate_card is None:
            self._rate_card = RateCard.for_config(self.config)
        return self._rate_card

    def decode(self, raw: bytes | str, position: str = "") -> StreamEvent | DeadLetter:
        """Decode one message; never raises for bad input."""
        size = len(raw)
        if size > self.max_bytes:
            return DeadLetter(
                "payload",
                f"{size} bytes is more than the {self.max_bytes} allowed; send one cost per event",
                _keep(raw),
                size,
                position,
            )
        try:
            try:
                data = _FAST_JSON.decode(raw)
            except (msgspec.DecodeError, RecursionError):  # json.loads names the problem (or reads an escaped
                text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw  # lone surrogate)
                data = json.loads(text, parse_float=Decimal, parse_constant=_no_constant)
            rec, group = self._record(data)
            t = data["event_time"]  # parsed by _record: canonical text is a valid time
            return StreamEvent(
                rec, data["source"], position, rec.x_line_item_id or "", group, raw, t if is_canonical_time(t) else None
            )
        except _Bad as e:
            return DeadLetter(e.field, e.reason, _keep(raw), size, position)
        except UnicodeDecodeError:
            return DeadLetter("payload", "not UTF-8 text; encode events as UTF-8 JSON", _keep(raw), size, position)
        except (json.JSONDecodeError, RecursionError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            return DeadLetter("payload", f"not valid JSON ({msg})", _keep(raw), size, position)
        except Exception as e:  # a poison message must never stop the stream
            return DeadLetter("payload", f"unreadable event ({type(e).__name__})", _keep(raw), size, position)

    def _record(self, data: Any) -> tuple[CostRecord, tuple[Any, ...] | None]:
        """The event's record and its fold group apart from the hour (``None``: not known here).

        Events that share everything but their id, times and amounts (the same attribution, tags, platform,
        kind, currency, unit...) share one validated, attributed :class:`_Template`: the first such event goes
        through every check below and the rest only check their own id, times and amounts, in the same order,
        so an event gets the same record or the same error either way. A key matches only values of the same
        JSON types (a string equals only a string; tag values must be strings), and the checks that follow
        from the key depend on nothing else.
        """
        if not isinstance(data, dict):
            raise _Bad("payload", "an event is a JSON object; see the cost-event schema")
        ver = data.get("schema_version")
        if ver != SCHEMA_VERSION or isinstance(ver, bool):
            raise _Bad(
                "schema_version",
                f"{ver!r} is not supported (this consumer reads {SCHEMA_VERSION}); upgrade the consumer",
            )
        event_id: str = _text(data, "event_id", required=True, limit=_MAX_ID)  # type: ignore[assignment]
        _text(data, "source", required=True, limit=200)
        start = _time(data.get("event_time"), "event_time")
        end = _time(data["end_time"], "end_time") if data.get("end_time") is not None else start
        if end < start:
            raise _Bad("end_time", "is before event_time; swap them")
        if self.max_future is not None and start > self.clock() + self.max_future:
            raise _Bad("event_time", f"{start.isoformat()} is in the future; check the producer's clock")
        cost = data.get("cost")
        if type(cost) is not dict:
            return self._full(data, event_id, start, end), None
        usage = data.get("usage")
        attribution = data.get("attribution")
        if (usage is not None and type(usage) is not dict) or (
            attribution is not None and type(attribution) is not dict
        ):
            return self._full(data, event_id, start, end), None
        key: tuple[Any, ...] = (
            data.get("kind", "estimate"),
            data.get("platform"),
            data.get("service"),
            cost.get("currency"),
            None if usage is None else (usage.get("unit"), usage.get("sku"), usage.get("region")),
            None if attribution is None else tuple(attribution.items()),
        )
        try:
            tpl = self._templates.get(key)
        except TypeError:  # an unhashable value: the tags object (or something the checks reject)
            tagged = _tagged_key(key, attribution) if attribution is not None else None
            if tagged is None:
                return self._full(data, event_id, start, end), None
            key = tagged
            tpl = self._templates.get(key)
        if tpl is None:
            rec = self._full(data, event_id, start, end)
            tpl = self._remember(key, rec, usage is not None)
            return rec, tpl.groups[rec.charge_category == "Credit"]
        quantity = None
        if tpl.usage:  # as _full: the quantity, then the amount (the rest of both follows from the key)
            q = usage.get("quantity")  # type: ignore[union-attr]
            quantity = _dec(q, "usage.quantity") if q is not None else None
        if cost.get("amount") is None:
            raise _Bad("cost.amount", "missing; give the amount as a decimal string such as 12.50")
        amount = _dec(cost["amount"], "cost.amount")
        v = list(tpl.values)
        v[_I_BILLED] = v[_I_EFFECTIVE] = amount
        v[_I_START] = start
        v[_I_END] = end
        credit = amount < 0
        v[_I_CATEGORY] = "Credit" if credit else "Usage"
        v[_I_PQ] = v[_I_CQ] = quantity
        v[_I_ID] = event_id
        v[_I_TAGS] = dict(tpl.tags)
        return CostRecord(*v), tpl.groups[credit]

    def _remember(self, key: tuple[Any, ...], rec: CostRecord, usage: bool) -> _Template:
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        usage_rec = dataclasses.replace(rec, charge_category="Usage")
        credit_rec = dataclasses.replace(rec, charge_category="Credit")
        tpl = self._templates[key] = _Template(
            tuple(getattr(rec, n) for n in _FIELDS),
            (group_part(usage_rec), group_part(credit_rec)),
            dict(rec.tags),
            usage,
        )
        return tpl

    def _full(self, data: dict[str, Any], event_id: str, start: dt.datetime, end: dt.datetime) -> CostRecord:
        """Every check after the event's id and times (see :meth:`_record`)."""
        kind = data.get("kind", "estimate")
        if kind not in KINDS:
            raise _Bad("kind", f"{kind!r} is not one of {', '.join(KINDS)}")
        attribution = data.get("attribution") or {}
        if not isinstance(attribution, dict):
            raise _Bad("attribution", "must be a JSON object")
        attrs = {a: _text(attribution, a) for a in _ATTRIBUTION}
        tags = _tags(attribution.get("tags"))
        platform = _text(data, "platform")
        service = _text(data, "service")
        cost, usage = data.get("cost"), data.get("usage")
        quantity = unit = sku = region = None
        unit_price: Decimal | None = None
        if usage is not None:
            if not isinstance(usage, dict):
                raise _Bad("usage", "must be a JSON object {quantity, unit, sku}")
            quantity = _dec(usage.get("quantity"), "usage.quantity") if usage.get("quantity") is not None else None
            unit, sku, region = _text(usage, "unit"), _text(usage, "sku"), _text(usage, "region")
        if cost is not None:
            if not isinstance(cost, dict):
                raise _Bad("cost", "must be a JSON object {amount, currency}")
            if cost.get("amount") is None:
                raise _Bad("cost.amount", "missing; give the amount as a decimal string such as 12.50")
            amount = _dec(cost["amount"], "cost.amount")
            try:
                currency = check_currency(cost.get("currency") or "", field_name="cost.currency")
            except MoneyError as e:
                raise _Bad("cost.currency", str(e).split(": ", 1)[-1]) from None
        elif usage is not None:
            if quantity is None or not unit or not sku:
                raise _Bad("usage", "usage needs quantity, unit and sku to be priced")
            if not platform:
                raise _Bad("platform", "missing; usage is priced per platform (for example databricks)")
            price = self._price(platform, sku, region, start.date())
            if price.unit.lower() != unit.lower():
                raise _Bad("usage.unit", f"{unit!r} does not match the rate card's unit {price.unit!r} for {sku}")
            money = price.cost(quantity)
            amount, currency, unit_price = money.amount, money.currency, price.amount.amount
        else:
            raise _Bad("cost", "missing; give cost {amount, currency} or usage {quantity, unit, sku}")
        rec = CostRecord(
            billed_cost=amount,
            billing_currency=currency,
            charge_period_start=start,
            charge_period_end=end,
            effective_cost=amount,
            list_cost=amount if unit_price is not None else None,
            charge_category="Credit" if amount < 0 else "Usage",
            pricing_quantity=quantity,
            pricing_unit=unit,
            consumed_quantity=quantity,
            consumed_unit=unit,
            list_unit_price=unit_price,
            sku_id=sku,
            region_id=region,
            service_name=service,
            provider_name=platform,
            tags=tags,
            x_line_item_id=event_id,
            x_source="stream",
            x_platform=platform,
            x_cost_kind=kind,
            x_dag_id=attrs["dag_id"],
            x_task_id=attrs["task_id"],
            x_run_id=attrs["run_id"],
            x_job_id=attrs["job_id"],
            x_team=attrs["team"],
            x_cost_center=attrs["cost_center"],
        )
        return self.attributor.apply(rec)

    def _price(self, platform: str, sku: str, region: str | None, on: dt.date) -> Any:
        key = (platform, sku, region, on)
        p = self._prices.get(key)
        if p is None:
            try:
                p = self.rate_card.price(platform, sku, region=region, on=on)
            except PriceNotFoundError as e:
                raise _Bad("usage.sku", str(e)) from None
            if len(self._prices) > 10_000:
                self._prices.clear()
            self._prices[key] = p
        return p


def _tagged_key(key: tuple[Any, ...], attribution: dict[str, Any]) -> tuple[Any, ...] | None:
    """``key`` with the tags object as a tuple of its items (``None``: not a template's key; see ``_record``)."""
    tags = attribution.get("tags")
    if type(tags) is not dict or not all(type(v) is str for v in tags.values()):
        return None  # tag values other than strings are converted: a key would mix 1, 1.0 and true
    tagged = (*key[:-1], tuple((k, tuple(tags.items()) if k == "tags" else v) for k, v in attribution.items()))
    try:
        hash(tagged)
    except TypeError:
        return None
    return tagged


def _keep(raw: bytes | str) -> str:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw[:_RAW_KEEP]).decode("utf-8", "replace")
    return raw[:_RAW_KEEP]


def _iso(t: dt.datetime | str) -> str:
    if isinstance(t, str):
        return t
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def cost_event(
    *,
    event_id: str,
    event_time: dt.datetime | str,
    source: str,
    amount: Any = None,
    currency: str | None = None,
    quantity: Any = None,
    unit: str | None = None,
    sku: str | None = None,
    region: str | None = None,
    platform: str | None = None,
    service: str | None = None,
    kind: str = "estimate",
    end_time: dt.datetime | str | None = None,
    dag_id: str | None = None,
    task_id: str | None = None,
    run_id: str | None = None,
    job_id: str | None = None,
    team: str | None = None,
    cost_center: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Build a schema-version-1 event (money as exact strings). Give ``amount`` + ``currency`` or usage."""
    if isinstance(amount, float) and not math.isfinite(amount):
        raise ValueError("amount must be finite")
    ev: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id,
        "event_time": _iso(event_time),
        "source": source,
        "kind": kind,
    }
    if end_time is not None:
        ev["end_time"] = _iso(end_time)
    if platform:
        ev["platform"] = platform
    if service:
        ev["service"] = service
    attribution: dict[str, Any] = {
        k: v
        for k, v in (
            ("dag_id", dag_id),
            ("task_id", task_id),
            ("run_id", run_id),
            ("job_id", job_id),
            ("team", team),
            ("cost_center", cost_center),
        )
        if v
    }
    if tags:
        attribution["tags"] = dict(tags)
    if attribution:
        ev["attribution"] = attribution
    if amount is not None:
        ev["cost"] = {"amount": str(to_decimal(amount)), "currency": currency or "USD"}
    if quantity is not None:
        ev["usage"] = {
            k: v
            for k, v in (("quantity", str(to_decimal(quantity))), ("unit", unit), ("sku", sku), ("region", region))
            if v
        }
    return ev


def event_from_record(record: CostRecord, *, source: str, event_id: str | None = None) -> dict[str, Any]:
    """A cost event for a record (for example a task's run-time estimate from the callbacks)."""
    eid = event_id or record.x_line_item_id or f"{record.x_source}:{record.identity()}"
    return cost_event(
        event_id=eid,
        event_time=record.charge_period_start,
        end_time=record.charge_period_end,
        source=source,
        amount=record.billed_cost,
        currency=record.billing_currency,
        quantity=record.pricing_quantity,
        unit=record.pricing_unit,
        sku=record.sku_id,
        region=record.region_id,
        platform=record.x_platform or record.provider_name,
        service=record.service_name,
        kind=record.x_cost_kind if record.x_cost_kind in KINDS else "estimate",
        dag_id=record.x_dag_id,
        task_id=record.x_task_id,
        run_id=record.x_run_id,
        job_id=record.x_job_id,
        team=record.x_team,
        cost_center=record.x_cost_center,
        tags=record.tags,
    )


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (Decimals as strings)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
