"""Pure arithmetic shared by the data-platform hooks (issue 4): quantities, hours, idle remainders, tags.

Hooks fetch and translate; the arithmetic lives here so it is tested without Airflow or any SDK.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from finops_provider.core.allocation import split_shared
from finops_provider.core.money import MONEY_CONTEXT, Money, to_decimal
from finops_provider.core.records import MAX_SCALE

_SECONDS_PER_HOUR = Decimal(3600)
#: The ledger stores 16 decimals: products of two 18-decimal numbers (Databricks DBUs x list price) are
#: rounded HALF_EVEN to this scale once, when the record is built (the only rounding before presentation).
LEDGER_QUANTUM = Decimal(1).scaleb(-MAX_SCALE)


def ledger_amount(value: Decimal) -> Decimal:
    """``value`` at the ledger's storage scale (16 decimals, HALF_EVEN); unchanged when already within it."""
    exp = value.as_tuple().exponent
    if isinstance(exp, int) and exp >= -MAX_SCALE:
        return value
    with localcontext(MONEY_CONTEXT):
        return value.quantize(LEDGER_QUANTUM, rounding=ROUND_HALF_EVEN)


def utc(value: dt.datetime | dt.date | str) -> dt.datetime:
    """A tz-aware UTC datetime from a datetime, a date or an ISO string (naive means UTC)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def hours_between(start: dt.datetime, end: dt.datetime) -> Decimal:
    """Exact hours in ``[start, end)`` (0 when end <= start), from whole microseconds."""
    delta = end - start
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if micros <= 0:
        return Decimal(0)
    with localcontext(MONEY_CONTEXT):
        return Decimal(micros) / Decimal(3_600_000_000)


def overlap_hours(a_start: dt.datetime, a_end: dt.datetime, b_start: dt.datetime, b_end: dt.datetime) -> Decimal:
    """Hours two intervals share."""
    return hours_between(max(a_start, b_start), min(a_end, b_end))


def sql_timestamp(value: dt.datetime) -> str:
    """A ``TIMESTAMP '...'`` literal (UTC) that Snowflake, Databricks SQL, BigQuery, DuckDB and SQLite all read.

    Only ever built from a ``datetime`` (never from user text), so inlining it is injection-safe; the hooks
    inline literals instead of bind parameters because each DB-API has its own paramstyle.
    """
    if not isinstance(value, dt.datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    return f"TIMESTAMP '{utc(value).strftime('%Y-%m-%d %H:%M:%S')}'"


# ------------------------------------------------------------------ Kubernetes quantities
_QTY_RE = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_SUFFIX = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
GIB = Decimal(2**30)


def parse_k8s_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity (``"250m"``, ``"1.5"``, ``"512Mi"``, ``"123456n"``, ``"1e3"``) exactly."""
    if value is None or value == "":
        return Decimal(0)
    text = str(value).strip()
    m = _QTY_RE.match(text)
    if not m:
        raise ValueError(f"{text[:30]!r} is not a Kubernetes quantity (for example 500m, 2, 1Gi)")
    number, suffix = m.group(1), m.group(2) or ""
    with localcontext(MONEY_CONTEXT):
        if suffix[:1] in ("e", "E"):
            return to_decimal(number) * Decimal(10) ** int(suffix[1:])
        return to_decimal(number) * _SUFFIX[suffix]


# ------------------------------------------------------------------ shared capacity
def idle_remainder(total: Money, used: Iterable[Money]) -> Money:
    """``total`` minus what workloads used (never below zero: usage sampled above capacity is not idle)."""
    rest = total
    for u in used:
        rest = rest - u
    return rest if rest.amount > 0 else Money.zero(total.currency)


def split_capacity(
    total: Money, consumption: Mapping[str, Decimal], capacity: Decimal
) -> tuple[dict[str, Money], Money]:
    """Split a capacity's cost by consumption; the unconsumed share is the idle row.

    :param total: what the capacity cost in the window.
    :param consumption: owner -> units consumed (Fabric CU-seconds, ...).
    :param capacity: units the capacity could deliver in the window (same unit).
    :return: (owner -> cost, idle cost); the parts add up to ``total`` exactly.
    """
    used = sum((Decimal(v) for v in consumption.values()), Decimal(0))
    if capacity <= 0:
        raise ValueError("capacity must be > 0")
    with localcontext(MONEY_CONTEXT):
        share = min(used / capacity, Decimal(1))
        used_cost = Money(ledger_amount(total.amount * share), total.currency)
    parts = split_shared(used_cost, consumption) if used > 0 else {}
    parts.pop("(unallocated)", None)
    return parts, total - used_cost


# ------------------------------------------------------------------ tags carried through platforms
def parse_tag_text(text: str | None) -> dict[str, str]:
    """Tags from a Snowflake QUERY_TAG / label string: a JSON object, ``k=v;k=v`` / ``k:v,k:v``, or free text.

    Free text is kept as ``{"query_tag": text}`` so nothing is lost.
    """
    if not text:
        return {}
    s = text.strip()
    if s.startswith("{"):
        try:
            data = json.loads(s)
        except json.JSONDecodeError:
            return {"query_tag": s}
        if isinstance(data, dict):
            return {str(k): "" if v is None else str(v) for k, v in data.items()}
    for sep, kv in ((";", "="), (",", "="), (",", ":")):
        parts = [p for p in s.split(sep) if p.strip()]
        if parts and all(kv in p for p in parts):
            return {p.split(kv, 1)[0].strip(): p.split(kv, 1)[1].strip() for p in parts}
    return {"query_tag": s}


def mapping_of(value: Any) -> dict[str, str]:
    """A str -> str dict from what DB-API drivers return for MAP / ARRAY<STRUCT<key, value>> / JSON columns."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    if isinstance(value, Mapping):
        if set(value) == {"key", "value"}:
            return {str(value["key"]): str(value["value"])}
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value:  # list of (k, v) tuples or of {"key":..., "value":...} structs
        if isinstance(item, Mapping):
            out[str(item.get("key"))] = "" if item.get("value") is None else str(item.get("value"))
        else:
            k, v = item
            out[str(k)] = "" if v is None else str(v)
    return out


def estimate_line_item_id(dag_id: str, run_id: str, task_id: str, map_index: int = -1, try_number: int = 1) -> str:
    """The ``x_line_item_id`` of a task try's estimate (same as :class:`~finops_provider.core.estimate.TaskTry`)."""
    return f"{dag_id}/{run_id}/{task_id}/{map_index}/{try_number}"


def per_hour(quantity_per_hour: Decimal, start: dt.datetime, end: dt.datetime) -> Decimal:
    """``quantity_per_hour`` x exact hours of ``[start, end)``."""
    with localcontext(MONEY_CONTEXT):
        return quantity_per_hour * hours_between(start, end)


def seconds_to_hours(seconds: Any) -> Decimal:
    with localcontext(MONEY_CONTEXT):
        return to_decimal(seconds, field_name="seconds") / _SECONDS_PER_HOUR


def estimate_record(
    task: Any,
    *,
    platform: str,
    cost: Money,
    quantity: Decimal,
    unit: str,
    sku: str | None,
    description: str,
    price_text: str | None = None,
    tags: Mapping[str, str] | None = None,
    resource_id: str | None = None,
    resource_type: str | None = None,
    service_name: str | None = None,
    team: str | None = None,
    cost_center: str | None = None,
) -> Any:
    """The estimate record of one task try (``x_cost_kind="estimate"``, line item ``dag/run/task/map/try``): the one
    builder every estimator uses (the task callback's duration x rate, and each platform hook's estimate).

    :param task: a :class:`finops_provider.core.estimate.TaskTry`.
    :param team: / :param cost_center: override the task's own attribution.
    """
    from finops_provider.core.estimate import SOURCE
    from finops_provider.core.records import build_record

    t = dict(getattr(task, "tags", None) or {})
    t.update(tags or {})
    t.update({"airflow_dag_id": task.dag_id, "airflow_task_id": task.task_id, "airflow_run_id": task.run_id})
    if price_text:
        t["finops_price"] = price_text
    amount = ledger_amount(cost.amount)
    return build_record(
        billed_cost=amount,
        effective_cost=amount,
        list_cost=amount,
        billing_currency=cost.currency,
        charge_period_start=task.start,
        charge_period_end=max(task.end, task.start),
        charge_category="Usage",
        charge_description=f"{platform} estimate of {task.task_id} try {task.try_number}: {description}"[:4000],
        pricing_quantity=ledger_amount(quantity),
        pricing_unit=unit,
        provider_name=platform,
        service_name=service_name or platform,
        sku_id=sku,
        resource_id=resource_id,
        resource_type=resource_type,
        tags=t,
        x_line_item_id=estimate_line_item_id(task.dag_id, task.run_id, task.task_id, task.map_index, task.try_number),
        x_source=SOURCE,
        x_platform=platform,
        x_cost_kind="estimate",
        x_dag_id=task.dag_id,
        x_task_id=task.task_id,
        x_run_id=task.run_id,
        x_job_id=task.dag_id,
        x_team=team or getattr(task, "team", None),
        x_cost_center=cost_center or getattr(task, "cost_center", None),
    )


_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
LABEL_MAX = 63


def label_value(value: Any) -> str:
    """A value every platform accepts as a label: BigQuery (lowercase ``[a-z0-9_-]``, <= 63 characters) and
    Kubernetes (also starts and ends alphanumeric).

    Lower-cased, other characters become ``_``, leading/trailing ``_``/``-`` dropped; longer values keep 54
    characters plus ``-`` and 8 hex digits of a hash of the original, so distinct ids stay distinct.
    ``scheduled__2026-03-01T00:00:00+00:00`` -> ``scheduled__2026-03-01t00_00_00_00_00``.
    """
    text = str(value)
    s = _LABEL_BAD.sub("_", text.lower()).strip("_-")
    if len(s) > LABEL_MAX:
        digest = __import__("hashlib").blake2b(text.encode("utf-8"), digest_size=4).hexdigest()
        s = f"{s[:54].rstrip('_-')}-{digest}"
    return s or "none"
