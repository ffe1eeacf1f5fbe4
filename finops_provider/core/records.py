"""The FOCUS-shaped cost record: one schema for every source.

Column names follow FOCUS 1.2 (https://focus.finops.org). Our attribution lives in FOCUS extension
columns prefixed ``x_``. Every column is declared once in :data:`COLUMNS`; the reader, the writer and the
ledger schema are all derived from that table.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from finops_provider.core.money import MONEY_CONTEXT, Money, MoneyError, check_currency, to_decimal


class Kind(StrEnum):
    """How a column is typed."""

    MONEY = "money"  # Decimal in BillingCurrency
    DECIMAL = "decimal"  # exact quantity / unit price
    TIME = "time"  # tz-aware UTC datetime
    TEXT = "text"
    TAGS = "tags"  # JSON object of str -> str
    BOOL = "bool"


@dataclass(frozen=True)
class Column:
    attr: str
    focus: str
    kind: Kind
    metric: bool = False  # a measured value (restatable), not part of a row's identity
    derived: bool = False  # filled by attribution rules; not part of identity
    mandatory: bool = False  # FOCUS 1.2 mandatory column


def _c(attr: str, focus: str, kind: Kind = Kind.TEXT, **kw: bool) -> Column:
    return Column(attr, focus, kind, **kw)


#: Every column a cost record has, in FOCUS output order.
COLUMNS: tuple[Column, ...] = (
    # --- FOCUS 1.2 mandatory columns ---
    _c("billed_cost", "BilledCost", Kind.MONEY, metric=True, mandatory=True),
    _c("effective_cost", "EffectiveCost", Kind.MONEY, metric=True, mandatory=True),
    _c("list_cost", "ListCost", Kind.MONEY, metric=True, mandatory=True),
    _c("contracted_cost", "ContractedCost", Kind.MONEY, metric=True, mandatory=True),
    _c("billing_account_id", "BillingAccountId", mandatory=True),
    _c("billing_account_name", "BillingAccountName", mandatory=True),
    _c("billing_currency", "BillingCurrency", mandatory=True),
    _c("billing_period_start", "BillingPeriodStart", Kind.TIME, mandatory=True),
    _c("billing_period_end", "BillingPeriodEnd", Kind.TIME, mandatory=True),
    _c("charge_category", "ChargeCategory", mandatory=True),
    _c("charge_class", "ChargeClass", mandatory=True),
    _c("charge_description", "ChargeDescription", mandatory=True),
    _c("charge_period_start", "ChargePeriodStart", Kind.TIME, mandatory=True),
    _c("charge_period_end", "ChargePeriodEnd", Kind.TIME, mandatory=True),
    _c("invoice_issuer_name", "InvoiceIssuerName", mandatory=True),
    _c("pricing_quantity", "PricingQuantity", Kind.DECIMAL, metric=True, mandatory=True),
    _c("pricing_unit", "PricingUnit", mandatory=True),
    _c("provider_name", "ProviderName", mandatory=True),
    _c("publisher_name", "PublisherName", mandatory=True),
    _c("service_category", "ServiceCategory", mandatory=True),
    _c("service_name", "ServiceName", mandatory=True),
    # --- FOCUS conditional / recommended columns we keep ---
    _c("availability_zone", "AvailabilityZone"),
    _c("charge_frequency", "ChargeFrequency"),
    _c("commitment_discount_category", "CommitmentDiscountCategory"),
    _c("commitment_discount_id", "CommitmentDiscountId"),
    _c("commitment_discount_name", "CommitmentDiscountName"),
    _c("commitment_discount_status", "CommitmentDiscountStatus"),
    _c("commitment_discount_type", "CommitmentDiscountType"),
    _c("consumed_quantity", "ConsumedQuantity", Kind.DECIMAL, metric=True),
    _c("consumed_unit", "ConsumedUnit"),
    _c("contracted_unit_price", "ContractedUnitPrice", Kind.DECIMAL, metric=True),
    _c("invoice_id", "InvoiceId"),
    _c("list_unit_price", "ListUnitPrice", Kind.DECIMAL, metric=True),
    _c("pricing_category", "PricingCategory"),
    _c("region_id", "RegionId"),
    _c("region_name", "RegionName"),
    _c("resource_id", "ResourceId"),
    _c("resource_name", "ResourceName"),
    _c("resource_type", "ResourceType"),
    _c("service_subcategory", "ServiceSubcategory"),
    _c("sku_id", "SkuId"),
    _c("sku_price_id", "SkuPriceId"),
    _c("sub_account_id", "SubAccountId"),
    _c("sub_account_name", "SubAccountName"),
    _c("tags", "Tags", Kind.TAGS),
    # --- our extension columns ---
    _c("x_line_item_id", "x_LineItemId"),
    _c("x_source", "x_Source"),
    _c("x_platform", "x_Platform"),
    _c("x_cost_kind", "x_CostKind"),  # "billed" (truth) or "estimate" (run-time)
    _c("x_provisional", "x_Provisional", Kind.BOOL, metric=True),  # billed but not final (CE Estimated)
    _c("x_dag_id", "x_DagId"),
    _c("x_task_id", "x_TaskId"),
    _c("x_run_id", "x_RunId"),
    _c("x_job_id", "x_JobId"),
    _c("x_asset", "x_Asset"),
    _c("x_team", "x_Team", derived=True),
    _c("x_cost_center", "x_CostCenter", derived=True),
)

COLUMN_BY_ATTR: dict[str, Column] = {c.attr: c for c in COLUMNS}
COLUMN_BY_FOCUS: dict[str, Column] = {c.focus: c for c in COLUMNS}
#: Accepted alternative header names (lower-cased) -> attribute.
HEADER_ALIASES: dict[str, str] = {
    **{c.focus.lower(): c.attr for c in COLUMNS},
    **{c.attr: c.attr for c in COLUMNS},
    "id": "x_line_item_id",  # the FOCUS sample data's row id
}
MONEY_ATTRS = tuple(c.attr for c in COLUMNS if c.kind is Kind.MONEY)
COST_BASES = {
    "billed": "billed_cost",
    "effective": "effective_cost",
    "list": "list_cost",
    "contracted": "contracted_cost",
}
COST_KINDS = ("billed", "estimate")
UNALLOCATED = "(unallocated)"


class RecordError(ValueError):
    """A row is invalid. ``field`` names the FOCUS column; the message says the fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(slots=True)
class CostRecord:
    """One charge, in FOCUS 1.2 columns plus our ``x_`` attribution columns.

    Money columns are exact Decimals in ``billing_currency``. Times are tz-aware UTC.
    """

    billed_cost: Decimal
    billing_currency: str
    charge_period_start: dt.datetime
    charge_period_end: dt.datetime
    effective_cost: Decimal | None = None
    list_cost: Decimal | None = None
    contracted_cost: Decimal | None = None
    billing_account_id: str | None = None
    billing_account_name: str | None = None
    billing_period_start: dt.datetime | None = None
    billing_period_end: dt.datetime | None = None
    charge_category: str | None = "Usage"
    charge_class: str | None = None
    charge_description: str | None = None
    invoice_issuer_name: str | None = None
    pricing_quantity: Decimal | None = None
    pricing_unit: str | None = None
    provider_name: str | None = None
    publisher_name: str | None = None
    service_category: str | None = None
    service_name: str | None = None
    availability_zone: str | None = None
    charge_frequency: str | None = None
    commitment_discount_category: str | None = None
    commitment_discount_id: str | None = None
    commitment_discount_name: str | None = None
    commitment_discount_status: str | None = None
    commitment_discount_type: str | None = None
    consumed_quantity: Decimal | None = None
    consumed_unit: str | None = None
    contracted_unit_price: Decimal | None = None
    invoice_id: str | None = None
    list_unit_price: Decimal | None = None
    pricing_category: str | None = None
    region_id: str | None = None
    region_name: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None
    resource_type: str | None = None
    service_subcategory: str | None = None
    sku_id: str | None = None
    sku_price_id: str | None = None
    sub_account_id: str | None = None
    sub_account_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    x_line_item_id: str | None = None
    x_source: str = "focus"
    x_platform: str | None = None
    x_cost_kind: str = "billed"
    x_provisional: bool = False
    x_dag_id: str | None = None
    x_task_id: str | None = None
    x_run_id: str | None = None
    x_job_id: str | None = None
    x_asset: str | None = None
    x_team: str | None = None
    x_cost_center: str | None = None

    # ----------------------------------------------------------------- helpers
    def cost(self, basis: str = "billed") -> Money:
        """The cost on a named basis (billed / effective / list / contracted), with its currency."""
        try:
            attr = COST_BASES[basis]
        except KeyError:
            raise ValueError(f"unknown cost basis {basis!r}; use one of {sorted(COST_BASES)}") from None
        value = getattr(self, attr)
        return Money(value if value is not None else Decimal(0), self.billing_currency)

    def identity(self) -> str:
        """Hash of what the charge *is* (not how much it cost): stable across restatements."""
        return self.fingerprints()[0]

    def content_hash(self) -> str:
        """Hash of every column: changes when any value (including cost) changes."""
        return self.fingerprints()[1]

    def fingerprints(self) -> tuple[str, str]:
        """(identity, content hash) computed in one pass (the ledger needs both for every row)."""
        # JSON arrays are unambiguous (strings are quoted and escaped, so no value can shift into the next) and
        # json encodes them in C; Decimals are normalized, so 1.50 and 1.5 are the same amount
        dims = _json_fields(_IDENTITY_GET(self))
        if self.x_line_item_id:
            ident_text = _json_fields((self.x_source, "id", self.x_line_item_id, self.charge_period_start))
        else:
            ident_text = _json_fields((self.x_source, dims))
        content_text = _json_fields((dims, _METRIC_GET(self)))
        ident = hashlib.blake2b(ident_text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        content = hashlib.blake2b(content_text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return ident, content

    def to_focus_row(self) -> dict[str, Any]:
        """FOCUS column name -> typed value (Decimal, datetime, dict, str, bool or None)."""
        return {c.focus: getattr(self, c.attr) for c in COLUMNS}

    def replace(self, **changes: Any) -> CostRecord:
        return dataclasses.replace(self, **changes)


_IDENTITY_ATTRS = tuple(c.attr for c in COLUMNS if not c.metric and not c.derived)
_METRIC_ATTRS = tuple(c.attr for c in COLUMNS if c.metric or c.derived)
_IDENTITY_GET = operator.attrgetter(*_IDENTITY_ATTRS)
_METRIC_GET = operator.attrgetter(*_METRIC_ATTRS)


def _json_default(v: Any) -> Any:
    if type(v) is Decimal:
        return ["d", format(v.normalize(MONEY_CONTEXT), "f") if v else "0"]  # 60 digits: never rounds an amount
    if isinstance(v, dt.datetime):
        return ["t", v.isoformat()]
    return ["s", str(v)]


_FIELDS_ENCODER = json.JSONEncoder(default=_json_default, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _json_fields(values: Any) -> str:
    return _FIELDS_ENCODER.encode(values)


# --------------------------------------------------------------------- parsing
_NULLS = frozenset({"", "NULL", "null", "None", "NaT"})
_TZ_RE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
MAX_TAGS = 200
#: The ledger stores NUMERIC(38, 16): 22 integer digits, 16 decimals.
MAX_SCALE = 16
MAX_INT_DIGITS = 22


def check_magnitude(value: Decimal, field_name: str) -> None:
    """Reject numbers the ledger could not store exactly (instead of silently rounding them)."""
    if value and value.adjusted() >= MAX_INT_DIGITS:
        raise RecordError(field_name, f"{value:.6E} is out of range (10^{MAX_INT_DIGITS} or more); check the export")
    _, digits, exp = value.as_tuple()
    if not isinstance(exp, int) or exp >= -MAX_SCALE:  # few enough places even before trailing zeros are dropped
        return
    n = len(digits)  # exact decimal places: drop trailing zeros without rounding (no normalize())
    while n > 1 and digits[n - 1] == 0:
        n -= 1
    exp += len(digits) - n
    if value and exp < -MAX_SCALE:
        raise RecordError(
            field_name, f"{value} has more than {MAX_SCALE} decimal places; round it at the source or check the export"
        )


MAX_TEXT = 4096


def is_canonical_time(value: Any) -> bool:
    """``value`` has the canonical form ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (whether it is a valid time: parse it)."""
    return (
        type(value) is str
        and len(value) in (20, 27)
        and value[-1] == "Z"
        and value[10] == "T"
        and value[4] == value[7] == "-"
        and value[13] == value[16] == ":"
        and (len(value) == 20 or value[19] == ".")
    )


def parse_time(value: Any, field_name: str) -> dt.datetime:
    """Parse a FOCUS timestamp to tz-aware UTC. Naive values are UTC (as FOCUS exports write them)."""
    if is_canonical_time(value):
        try:  # the common case: tzinfo is datetime.UTC itself, nothing to convert
            d = dt.datetime.fromisoformat(value)
        except ValueError:
            d = None  # the general path below names the problem
        if d is not None and d.tzinfo is dt.UTC:
            return d
    if isinstance(value, dt.datetime):
        d = value
    elif isinstance(value, dt.date):
        d = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            d = dt.datetime.fromisoformat(text)
        except ValueError:
            raise RecordError(
                field_name, f"{value[:40]!r} is not a timestamp; use ISO 8601 such as 2024-09-01T00:00:00Z"
            ) from None
    else:
        raise RecordError(field_name, f"expected a timestamp, got {type(value).__name__}")
    if d.tzinfo is None:
        return d.replace(tzinfo=dt.UTC)
    return d.astimezone(dt.UTC)


def _parse_tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text in _NULLS:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(
                "Tags", f'not valid JSON ({e.msg}); write a JSON object such as {{"team": "data"}}'
            ) from None
    if not isinstance(value, Mapping):
        raise RecordError("Tags", "must be a JSON object of key -> value")
    if len(value) > MAX_TAGS:
        raise RecordError("Tags", f"{len(value)} tags is more than the {MAX_TAGS} allowed; drop unused tags")
    out: dict[str, str] = {}
    for k, v in value.items():
        ks = str(k)
        vs = "" if v is None else (v if isinstance(v, str) else json.dumps(v))
        if len(ks) > 256 or len(vs) > 1024:
            raise RecordError("Tags", f"tag {ks[:30]!r} is too long (keys <= 256, values <= 1024 characters)")
        if not (is_utf8(ks) and is_utf8(vs)):
            raise RecordError("Tags", f"tag {ks[:30]!r} is not valid UTF-8 text; export the file as UTF-8")
        out[ks] = vs
    return out


def is_utf8(s: str) -> bool:
    """False for text holding lone surrogates (invalid UTF-8 read with ``surrogateescape``, or ``\\udcxx`` in JSON)."""
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() in _NULLS)


def record_from_mapping(row: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None) -> CostRecord:
    """Build a validated :class:`CostRecord` from a FOCUS row (FOCUS names, aliases or attribute names).

    Unknown columns are ignored (the caller reports them once). Raises :class:`RecordError` naming the
    column and the fix for the first problem found.
    """
    kw: dict[str, Any] = dict(defaults or {})
    for key, raw in row.items():
        attr = HEADER_ALIASES.get(key) or HEADER_ALIASES.get(str(key).lower())
        if attr is None:
            continue
        col = COLUMN_BY_ATTR[attr]
        if col.kind is Kind.TAGS:
            kw[attr] = _parse_tags(raw)
            continue
        if _is_null(raw):
            if attr not in kw:
                kw[attr] = None
            continue
        if col.kind in (Kind.MONEY, Kind.DECIMAL):
            try:
                kw[attr] = to_decimal(raw, field_name=col.focus)
            except MoneyError as e:
                raise RecordError(col.focus, str(e).split(": ", 1)[-1]) from None
            check_magnitude(kw[attr], col.focus)
        elif col.kind is Kind.TIME:
            kw[attr] = parse_time(raw, col.focus)
        elif col.kind is Kind.BOOL:
            kw[attr] = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "y", "t")
        else:
            s = raw if isinstance(raw, str) else str(raw)
            if len(s) > MAX_TEXT:
                raise RecordError(col.focus, f"value of {len(s)} characters is longer than {MAX_TEXT}")
            if not is_utf8(s):
                raise RecordError(col.focus, "is not valid UTF-8 text; export the file as UTF-8")
            kw[attr] = s
    return build_record(**kw)


def build_record(**kw: Any) -> CostRecord:
    """Validate the cross-field rules and build the record (used by every source)."""
    if kw.get("billed_cost") is None:
        raise RecordError("BilledCost", "missing; every charge needs a billed cost (0 is allowed)")
    try:
        kw["billed_cost"] = to_decimal(kw["billed_cost"], field_name="BilledCost")
    except MoneyError as e:
        raise RecordError("BilledCost", str(e).split(": ", 1)[-1]) from None
    try:
        kw["billing_currency"] = check_currency(kw.get("billing_currency") or "", field_name="BillingCurrency")
    except MoneyError as e:
        raise RecordError("BillingCurrency", str(e).split(": ", 1)[-1]) from None
    for a in ("charge_period_start", "charge_period_end"):
        if kw.get(a) is None:
            raise RecordError(COLUMN_BY_ATTR[a].focus, "missing; give the charge's UTC start and end")
        kw[a] = parse_time(kw[a], COLUMN_BY_ATTR[a].focus)
    if kw["charge_period_end"] < kw["charge_period_start"]:
        raise RecordError(
            "ChargePeriodEnd",
            f"{kw['charge_period_end'].isoformat()} is before ChargePeriodStart "
            f"{kw['charge_period_start'].isoformat()}; swap them or fix the export",
        )
    for a in ("billing_period_start", "billing_period_end"):
        if kw.get(a) is not None:
            kw[a] = parse_time(kw[a], COLUMN_BY_ATTR[a].focus)
    check_magnitude(kw["billed_cost"], "BilledCost")
    for a in MONEY_ATTRS[1:]:
        if kw.get(a) is not None:
            try:
                kw[a] = to_decimal(kw[a], field_name=COLUMN_BY_ATTR[a].focus)
            except MoneyError as e:
                raise RecordError(COLUMN_BY_ATTR[a].focus, str(e).split(": ", 1)[-1]) from None
            check_magnitude(kw[a], COLUMN_BY_ATTR[a].focus)
    kind = kw.get("x_cost_kind") or "billed"
    if kind not in COST_KINDS:
        raise RecordError("x_CostKind", f"{kind!r} is not one of {COST_KINDS}")
    kw["x_cost_kind"] = kind
    if kw.get("tags") is None:
        kw["tags"] = {}
    if not kw.get("x_source"):
        kw["x_source"] = "focus"
    return CostRecord(**kw)
