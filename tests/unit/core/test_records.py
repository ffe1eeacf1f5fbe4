"""The FOCUS-shaped cost record: validation naming the column, UTC times, identity vs content."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finops_provider.core.money import Money
from finops_provider.core.records import (
    COLUMN_BY_FOCUS,
    COLUMNS,
    MAX_INT_DIGITS,
    MAX_SCALE,
    CostRecord,
    RecordError,
    build_record,
    check_magnitude,
    parse_time,
    record_from_mapping,
)

UTC = dt.UTC

BASE_ROW = {
    "Id": "line-1",
    "BilledCost": "1.25",
    "EffectiveCost": "1.00",
    "BillingCurrency": "USD",
    "ChargePeriodStart": "2024-09-01T00:00:00Z",
    "ChargePeriodEnd": "2024-09-01T01:00:00Z",
    "ServiceName": "Amazon S3",
    "Tags": '{"team": "data", "env": "prod"}',
}


def _row(**changes: str) -> dict[str, str]:
    return {**BASE_ROW, **changes}


def test_columns_are_declared_once() -> None:
    assert len({c.attr for c in COLUMNS}) == len(COLUMNS)
    assert len({c.focus for c in COLUMNS}) == len(COLUMNS)
    assert COLUMN_BY_FOCUS["BilledCost"].attr == "billed_cost"


def test_record_from_mapping_builds_typed_record() -> None:
    r = record_from_mapping(_row())
    assert r.x_line_item_id == "line-1"
    assert r.billed_cost == Decimal("1.25")
    assert r.effective_cost == Decimal("1.00")
    assert r.billing_currency == "USD"
    assert r.charge_period_start == dt.datetime(2024, 9, 1, tzinfo=UTC)
    assert r.tags == {"team": "data", "env": "prod"}
    assert r.x_source == "focus"
    assert r.x_cost_kind == "billed"
    assert r.cost("billed") == Money.of("1.25", "USD")
    assert r.cost("effective") == Money.of("1.00", "USD")
    assert r.cost("list") == Money.zero("USD")


def test_attribute_names_and_aliases_accepted() -> None:
    r = record_from_mapping(
        {
            "billed_cost": "2",
            "billingcurrency": "eur",
            "charge_period_start": "2024-09-01",
            "ChargePeriodEnd": "2024-09-02",
            "Unknown": "ignored",
        }
    )
    assert (r.billed_cost, r.billing_currency) == (Decimal(2), "EUR")
    assert r.charge_period_end - r.charge_period_start == dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        pytest.param(
            {"ChargePeriodEnd": "2024-08-31T23:00:00Z"},
            "ChargePeriodEnd",
            "is before ChargePeriodStart",
            id="end-before-start",
        ),
        pytest.param({"BilledCost": "NaN"}, "BilledCost", "not a finite amount", id="nan-cost"),
        pytest.param({"EffectiveCost": "inf"}, "EffectiveCost", "not a finite amount", id="inf-effective"),
        pytest.param({"BilledCost": "1,5"}, "BilledCost", "is not a number", id="not-a-number"),
        pytest.param({"BilledCost": ""}, "BilledCost", "missing", id="missing-cost"),
        pytest.param({"BillingCurrency": "XYZ"}, "BillingCurrency", "not an ISO-4217", id="unknown-currency"),
        pytest.param({"Tags": "{team: data"}, "Tags", "not valid JSON", id="invalid-tags-json"),
        pytest.param({"Tags": "[1, 2]"}, "Tags", "must be a JSON object", id="tags-not-object"),
        pytest.param({"BilledCost": "1" * 30}, "BilledCost", "out of range", id="30-digit-amount"),
        pytest.param({"ListCost": "0.12345678901234567"}, "ListCost", "more than 16 decimal places", id="17-decimals"),
        pytest.param({"ChargePeriodStart": "yesterday"}, "ChargePeriodStart", "is not a timestamp", id="bad-time"),
        pytest.param({"x_CostKind": "guess"}, "x_CostKind", "is not one of", id="bad-cost-kind"),
        pytest.param({"ServiceName": "s" * 5000}, "ServiceName", "longer than 4096", id="text-too-long"),
    ],
)
def test_invalid_rows_name_the_field(changes: dict[str, str], field: str, reason: str) -> None:
    with pytest.raises(RecordError) as ei:
        record_from_mapping(_row(**changes))
    assert ei.value.field == field
    assert reason in ei.value.message
    assert str(ei.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("9999999999999999999999.9999999999999999", id="max-38-16"),
        pytest.param("0.0000000000000001", id="smallest"),
        pytest.param("-123456789012345678901.5", id="large-negative"),
        pytest.param("1.50000000000000000000", id="trailing-zeros-beyond-16"),
        pytest.param("0E-20", id="zero-with-20-decimals"),
        pytest.param("-0.000000000000000000000", id="negative-zero-with-21-decimals"),
    ],
)
def test_storable_magnitudes_accepted(value: str) -> None:
    check_magnitude(Decimal(value), "BilledCost")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("10000000000000000000000", id="23-integer-digits"),
        pytest.param("0.00000000000000001", id="17-decimals"),
        # 38 significant digits: must not be judged after rounding to the default 28-digit context
        pytest.param("123456789012345678901.00000000000000001", id="17-decimals-many-digits"),
        pytest.param("1.0000000000000000000000000000000000001", id="37-decimals"),
    ],
)
def test_unstorable_magnitudes_rejected(value: str) -> None:
    with pytest.raises(RecordError) as ei:
        check_magnitude(Decimal(value), "BilledCost")
    assert ei.value.field == "BilledCost"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2024-09-01T02:00:00+02:00", dt.datetime(2024, 9, 1, 0, 0, tzinfo=UTC), id="plus-two-hours"),
        pytest.param("2024-08-31T22:30:00-01:30", dt.datetime(2024, 9, 1, 0, 0, tzinfo=UTC), id="minus-offset"),
        pytest.param("2024-09-01T00:00:00Z", dt.datetime(2024, 9, 1, tzinfo=UTC), id="zulu"),
        pytest.param("2024-09-01 00:00:00", dt.datetime(2024, 9, 1, tzinfo=UTC), id="naive-is-utc"),
        pytest.param("2024-09-01", dt.datetime(2024, 9, 1, tzinfo=UTC), id="date-only"),
        pytest.param(dt.date(2024, 9, 1), dt.datetime(2024, 9, 1, tzinfo=UTC), id="date-object"),
    ],
)
def test_times_become_utc(text: object, expected: dt.datetime) -> None:
    got = parse_time(text, "ChargePeriodStart")
    assert got == expected
    assert got.utcoffset() == dt.timedelta(0)
    assert got.isoformat() == expected.isoformat()


def test_record_with_offset_time_is_stored_in_utc() -> None:
    r = record_from_mapping(
        _row(ChargePeriodStart="2024-09-01T02:00:00+02:00", ChargePeriodEnd="2024-09-01T03:00:00+02:00")
    )
    assert r.charge_period_start.isoformat() == "2024-09-01T00:00:00+00:00"
    assert r.charge_period_end.isoformat() == "2024-09-01T01:00:00+00:00"


def test_identical_rows_have_equal_identity_and_content() -> None:
    a, b = record_from_mapping(_row()), record_from_mapping(_row())
    assert a == b
    assert a.identity() == b.identity()
    assert a.content_hash() == b.content_hash()


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"BilledCost": "1.26"}, id="billed-cost"),
        pytest.param({"EffectiveCost": "0.99"}, id="effective-cost"),
    ],
)
def test_restated_cost_keeps_identity_changes_content(changes: dict[str, str]) -> None:
    a, b = record_from_mapping(_row()), record_from_mapping(_row(**changes))
    assert a.identity() == b.identity()
    assert a.content_hash() != b.content_hash()


def test_trailing_zeros_do_not_change_content_hash() -> None:
    assert (
        record_from_mapping(_row(BilledCost="1.25")).content_hash()
        == record_from_mapping(_row(BilledCost="1.250000")).content_hash()
    )


def test_content_hash_sees_every_digit_of_a_38_digit_amount() -> None:
    a = record_from_mapping(_row(BilledCost="123456789012345678901.1234567890123456"))
    b = record_from_mapping(_row(BilledCost="123456789012345678901.1234567890123457"))
    assert a.content_hash() != b.content_hash()


def test_different_period_or_id_changes_identity() -> None:
    base = record_from_mapping(_row())
    assert base.identity() != record_from_mapping(_row(Id="line-2")).identity()
    assert (
        base.identity()
        != record_from_mapping(
            _row(ChargePeriodStart="2024-09-01T01:00:00Z", ChargePeriodEnd="2024-09-01T02:00:00Z")
        ).identity()
    )


def test_identity_without_line_item_id_uses_dimensions_not_metrics() -> None:
    row = {k: v for k, v in _row().items() if k != "Id"}
    a = record_from_mapping(row)
    assert a.identity() == record_from_mapping({**row, "BilledCost": "9"}).identity()
    assert a.identity() != record_from_mapping({**row, "ServiceName": "Amazon EC2"}).identity()
    assert a.identity() == a.replace(x_team="data").identity()  # derived attribution is not identity


def test_build_record_rejects_bad_cross_field_values() -> None:
    start = dt.datetime(2024, 9, 1, tzinfo=UTC)
    with pytest.raises(RecordError, match=r"^BillingCurrency: missing currency"):
        build_record(billed_cost=Decimal(1), charge_period_start=start, charge_period_end=start)
    r = build_record(billed_cost=1, billing_currency="usd", charge_period_start=start, charge_period_end=start)
    assert isinstance(r, CostRecord)
    assert (r.billed_cost, r.billing_currency, r.tags) == (Decimal(1), "USD", {})


def test_unknown_cost_basis_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown cost basis 'net'"):
        record_from_mapping(_row()).cost("net")


# ------------------------------------------------- the fast branches of parse_time / check_magnitude vs the rules
def _outcome(fn: Any, *args: Any) -> Any:
    try:
        v = fn(*args)
    except RecordError:
        return ("error",)  # the fast branches never raise: an error always comes from the general path
    return ("ok", v, getattr(v, "tzinfo", None) is UTC)


def _iso_rule(value: Any, field_name: str) -> dt.datetime:
    """The general rule: strip, "Z" = +00:00, ISO 8601, naive = UTC, converted to UTC."""
    if not isinstance(value, str):
        return parse_time(value, field_name)  # non-strings never take the fast branch
    text = value.strip()
    text = text[:-1] + "+00:00" if text.endswith("Z") else text
    try:
        d = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(field_name, "not a timestamp") from None
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d.astimezone(UTC)


_TIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.datetimes().map(lambda t: t.isoformat() + "Z"),
    st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?Z?", fullmatch=True),
    st.sampled_from(["2026-10-10T00:00:00Z", "2026-10-10T24:00:00Z", "2026-02-30T00:00:00Z", "2026-10-10Z",
                     "2026-10-10T00:00:00+00:00", "2026-10-10t00:00:00Z", " 2026-10-10T00:00:00Z",
                     "2026-10-10T00:00:00.123456Z", "2026-10-10T00:00+05:00:00.0Z"]),
    st.text(max_size=30),
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(_TIMES)
def test_parse_time_fast_branch_follows_the_iso_rule(v: str) -> None:
    """Canonical ``...Z`` strings skip the general path: same instant, same ``datetime.UTC`` tzinfo, same errors."""
    assert _outcome(parse_time, v, "t") == _outcome(_iso_rule, v, "t")


def _places_rule(value: Decimal) -> bool:
    """True when ``value`` fits: under 10^MAX_INT_DIGITS, at most MAX_SCALE places once trailing zeros go."""
    if not value.is_finite() or not value:
        return True
    _, digits, exp = value.as_tuple()
    assert isinstance(exp, int)
    zeros, stripped = 0, list(digits)
    while len(stripped) > 1 and stripped[-1] == 0:
        stripped.pop()
        zeros += 1
    return value.adjusted() < MAX_INT_DIGITS and exp + zeros >= -MAX_SCALE


@settings(max_examples=800, deadline=None)
@given(
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False),
        st.from_regex(r"-?[0-9]{1,26}(\.[0-9]{0,22})?(E[-+]?[0-9]{1,2})?", fullmatch=True).map(Decimal),
        st.sampled_from(["1e22", "1e21", "0.00000000000000001", "1.0000000000000000000", "0E-30", "-0"]).map(Decimal),
    )
)
def test_check_magnitude_fast_exit_follows_the_rule(value: Decimal) -> None:
    ok = _outcome(check_magnitude, value, "x")[0] == "ok"
    assert ok == _places_rule(value)
