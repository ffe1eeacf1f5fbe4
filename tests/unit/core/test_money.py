"""Money: exact Decimal amounts, one currency at a time, HALF_EVEN only for display, explicit FX."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finops_provider.core.money import (
    CurrencyMismatchError,
    FxTable,
    Money,
    MoneyBag,
    MoneyError,
    check_currency,
    exact_sum,
    to_decimal,
)


# ------------------------------------------------------------------ exactness
def test_point_one_plus_point_two_is_exactly_point_three() -> None:
    total = Money.of(0.1) + Money.of(0.2)
    assert total == Money.of("0.3")
    assert total.amount == Decimal("0.3")
    assert str(total.amount) == "0.3"


def test_float_goes_through_str_not_binary() -> None:
    assert to_decimal(0.1) == Decimal("0.1")
    assert to_decimal(1e-11) == Decimal("1E-11")


def test_sum_builtin_works_and_is_exact() -> None:
    parts = [Money.of("0.00000000001")] * 7 + [Money.of("0.1")] * 3
    assert sum(parts) == Money.of("0.30000000007")


def test_exact_sum_keeps_every_digit() -> None:
    values = [Decimal("123456789012345678901.0000000000000001"), Decimal("0.0000000000000001")]
    assert exact_sum(values) == Decimal("123456789012345678901.0000000000000002")


def test_money_arithmetic() -> None:
    m = Money.of("10.10", "EUR")
    assert m - Money.of("0.10", "EUR") == Money.of("10", "EUR")
    assert -m == Money.of("-10.10", "EUR")
    assert m * 3 == Money.of("30.30", "EUR")
    assert 3 * m == Money.of("30.30", "EUR")
    assert m * "0.5" == Money.of("5.05", "EUR")
    assert Money.zero("EUR") < m
    with pytest.raises(TypeError, match="money by money"):
        m * m


# ---------------------------------------------------------------- currencies
@pytest.mark.parametrize(
    "op",
    [
        pytest.param(lambda a, b: a + b, id="add"),
        pytest.param(lambda a, b: a - b, id="sub"),
        pytest.param(lambda a, b: a < b, id="lt"),
        pytest.param(lambda a, b: a >= b, id="ge"),
    ],
)
def test_two_currencies_never_combine(op) -> None:
    with pytest.raises(CurrencyMismatchError, match="cannot combine USD and EUR"):
        op(Money.of("1", "USD"), Money.of("1", "EUR"))


def test_currency_mismatch_is_a_money_error() -> None:
    assert issubclass(CurrencyMismatchError, MoneyError)


def test_currency_code_normalised_and_checked() -> None:
    assert Money.of("1", " usd ").currency == "USD"
    assert check_currency("XYZ", extra=["XYZ"]) == "XYZ"
    with pytest.raises(MoneyError, match=r"BillingCurrency: 'XYZ' is not an ISO-4217"):
        check_currency("XYZ", field_name="BillingCurrency")
    with pytest.raises(MoneyError, match="missing currency"):
        Money.of("1", "")


# ------------------------------------------------------------- bad amounts
@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(float("nan"), "not a finite amount", id="float-nan"),
        pytest.param("NaN", "not a finite amount", id="str-nan"),
        pytest.param(float("inf"), "not a finite amount", id="float-inf"),
        pytest.param("-Infinity", "not a finite amount", id="str-neg-inf"),
        pytest.param(Decimal("sNaN"), "not a finite amount", id="decimal-snan"),
        pytest.param("", "empty value", id="empty"),
        pytest.param("   ", "empty value", id="blank"),
        pytest.param(True, "got a boolean", id="bool-true"),
        pytest.param(False, "got a boolean", id="bool-false"),
        pytest.param("12,50", "is not a number", id="comma-decimal"),
        pytest.param(None, "got NoneType", id="none"),
        pytest.param([1], "got list", id="list"),
    ],
)
def test_bad_amounts_rejected_naming_the_field(value, message) -> None:
    with pytest.raises(MoneyError, match=rf"^BilledCost: .*{message}"):
        to_decimal(value, field_name="BilledCost")


def test_money_constructor_rejects_nan_naming_amount() -> None:
    with pytest.raises(MoneyError, match=r"^amount: NaN is not a finite amount"):
        Money.of("NaN")


# ------------------------------------------------------------------ display
@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        pytest.param("2.345", "USD", "2.34", id="half-even-down"),
        pytest.param("2.355", "USD", "2.36", id="half-even-up"),
        pytest.param("2.3450000001", "USD", "2.35", id="above-half"),
        pytest.param("-2.345", "USD", "-2.34", id="negative"),
        pytest.param("1234.5", "JPY", "1234", id="jpy-0-decimals-even"),
        pytest.param("1235.5", "JPY", "1236", id="jpy-0-decimals-odd"),
        pytest.param("1.0005", "KWD", "1.000", id="kwd-3-decimals"),
        pytest.param("0.00000000001", "USD", "0.00", id="tiny"),
    ],
)
def test_display_rounding_is_half_even(amount: str, currency: str, expected: str) -> None:
    m = Money.of(amount, currency)
    assert str(m.rounded()) == expected
    assert m.amount == Decimal(amount)  # rounding never changes the stored amount


def test_format_and_json_round_trip() -> None:
    m = Money.of("1234567.125", "USD")
    assert m.format() == "1,234,567.12 USD"
    assert m.format(places=3) == "1,234,567.125 USD"
    assert m.to_json() == {"amount": "1234567.125", "currency": "USD"}
    assert Money.from_json(m.to_json()) == m


# ----------------------------------------------------------------------- FX
@pytest.fixture
def fx() -> FxTable:
    t = FxTable()
    t.add("EUR", "USD", "1.10", dt.date(2024, 9, 1), "ecb")
    t.add("EUR", "USD", "1.12", dt.date(2024, 9, 15), "ecb")
    t.add("USD", "JPY", "140", dt.date(2024, 9, 1), "boj")
    return t


@pytest.mark.parametrize(
    ("money", "to", "on", "expected"),
    [
        pytest.param(Money.of("100", "EUR"), "USD", dt.date(2024, 9, 10), Money.of("110.00", "USD"), id="first-rate"),
        pytest.param(Money.of("100", "EUR"), "USD", dt.date(2024, 9, 15), Money.of("112.00", "USD"), id="rate-on-day"),
        pytest.param(Money.of("100", "EUR"), "USD", dt.date(2025, 1, 1), Money.of("112.00", "USD"), id="latest-rate"),
        pytest.param(Money.of("112", "USD"), "EUR", dt.date(2024, 9, 20), Money.of("100", "EUR"), id="inverse"),
        pytest.param(Money.of("280", "JPY"), "USD", dt.date(2024, 9, 2), Money.of("2", "USD"), id="inverse-jpy"),
        pytest.param(Money.of("5", "USD"), "USD", dt.date(2000, 1, 1), Money.of("5", "USD"), id="identity"),
    ],
)
def test_fx_conversion_uses_dated_rates(fx: FxTable, money: Money, to: str, on: dt.date, expected: Money) -> None:
    assert fx.convert(money, to, on) == expected


def test_fx_inverse_rate_is_labelled(fx: FxTable) -> None:
    r = fx.rate("USD", "EUR", dt.date(2024, 9, 2))
    assert r.source == "ecb (inverse)"
    assert r.date == dt.date(2024, 9, 1)
    assert r.rate * Decimal("1.10") == Decimal(1)


@pytest.mark.parametrize(
    ("base", "quote", "on"),
    [
        pytest.param("EUR", "USD", dt.date(2024, 8, 31), id="before-first-rate"),
        pytest.param("EUR", "GBP", dt.date(2024, 9, 20), id="unknown-pair"),
    ],
)
def test_fx_missing_rate_raises(fx: FxTable, base: str, quote: str, on: dt.date) -> None:
    with pytest.raises(MoneyError, match=rf"no fx rate {base}->{quote} on or before {on}"):
        fx.rate(base, quote, on)


def test_fx_rejects_non_positive_rate() -> None:
    with pytest.raises(MoneyError, match="must be positive"):
        FxTable().add("EUR", "USD", "0", dt.date(2024, 1, 1), "x")


# ------------------------------------------------------------------ MoneyBag
def test_money_bag_keeps_currencies_apart() -> None:
    bag = MoneyBag([Money.of("1.5", "USD"), Money.of("2", "EUR"), Money.of("0.5", "USD")])
    assert bag.currencies == ["EUR", "USD"]
    assert bag.get("USD") == Money.of("2.0", "USD")
    assert bag.get("EUR") == Money.of("2", "EUR")
    assert bag.get("GBP") == Money.zero("GBP")
    assert bag.to_json() == {"EUR": "2", "USD": "2"}
    other = MoneyBag([Money.of("1", "GBP"), Money.of("1", "USD")])
    bag.merge(other)
    assert bag.to_json() == {"EUR": "2", "GBP": "1", "USD": "3"}


# -------------------------------------------------------------- properties
_decimals = st.builds(
    lambda i, scale: Decimal(f"{i}E-{scale}"),  # built from text: exact, no context rounding
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=0, max_value=16),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_decimals, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_sum_is_exact_commutative_and_associative(values: list[Decimal], rnd) -> None:
    monies = [Money(v, "USD") for v in values]
    forward = sum(monies, Money.zero("USD"))
    shuffled = list(monies)
    rnd.shuffle(shuffled)
    backward = sum(shuffled, Money.zero("USD"))
    split = rnd.randint(0, len(monies))
    grouped = sum(monies[:split], Money.zero("USD")) + sum(monies[split:], Money.zero("USD"))
    # exact reference: rational arithmetic
    assert Fraction(forward.amount) == sum(Fraction(v) for v in values)
    assert forward == backward == grouped


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_decimals, st.sampled_from(["USD", "EUR", "JPY", "GBP"])), max_size=40))
def test_money_bag_never_mixes_currencies(items: list[tuple[Decimal, str]]) -> None:
    bag = MoneyBag(Money(a, c) for a, c in items)
    assert bag.currencies == sorted({c for _, c in items})
    for cur in bag.currencies:
        assert Fraction(bag.get(cur).amount) == sum(Fraction(a) for a, c in items if c == cur)
        assert bag.get(cur).currency == cur


def _decimal_rule(text: str) -> Any:
    """The general rule for text: stripped, parsed by Decimal, finite; else refused."""
    from decimal import InvalidOperation

    t = text.strip()
    try:
        d = Decimal(t) if t else None
    except InvalidOperation:
        d = None
    return ("ok", d, str(d)) if d is not None and d.is_finite() else ("refused",)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.decimals(allow_nan=True, allow_infinity=True).map(str),
        st.from_regex(r"\s?-?[0-9_]{0,26}(\.[0-9]{0,20})?([eE][-+]?[0-9]{1,3})?\s?", fullmatch=True),
        st.sampled_from(["", " ", "NaN", "sNaN", "-Infinity", "1_000", "١٢٣", "\u00a012\u00a0", "1e999999999"]),
        st.text(max_size=12),
    )
)
def test_to_decimal_fast_branch_follows_the_rule_for_text(text: str) -> None:
    try:
        d = to_decimal(text)
        got: Any = ("ok", d, str(d))
    except MoneyError:
        got = ("refused",)
    assert got == _decimal_rule(text)
