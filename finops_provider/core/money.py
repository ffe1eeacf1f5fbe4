"""Exact money: a Decimal amount with an ISO-4217 currency.

Amounts are built with ``Decimal(str(x))``, summed exactly and rounded (HALF_EVEN) only when rendered.
Two currencies are never added together; conversion goes through an explicit :class:`FxTable`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation, localcontext
from typing import Any

#: Plenty of precision for sums of billions of 1e-11 amounts (FOCUS exports carry 11 decimals).
MONEY_CONTEXT = Context(prec=60, rounding=ROUND_HALF_EVEN)

#: ISO 4217 codes we accept (active codes; a user can extend via config ``extra_currencies``).
ISO_4217 = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD
    CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF
    GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP
    LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB
    PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP
    SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XOF XPF YER ZAR
    ZMW ZWL""".split()
)

#: Minor units for display; everything not listed shows 2 decimals.
_DISPLAY_DECIMALS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3}


class MoneyError(ValueError):
    """A money value could not be built (bad number or currency)."""


class CurrencyMismatchError(MoneyError):
    """Two different currencies were combined without an explicit conversion."""


def to_decimal(value: Any, *, field_name: str = "amount") -> Decimal:
    """Parse ``value`` into a finite Decimal without ever passing through binary float.

    :param value: a Decimal, int, str or float (floats go through ``str()`` so 0.1 stays 0.1).
    :param field_name: named in the error message.
    :raises MoneyError: for empty, non-numeric, NaN or infinite values.
    """
    if type(value) is str:  # the common case first (Decimal() ignores the surrounding whitespace strip() would drop)
        try:
            d = Decimal(value)
        except InvalidOperation:
            d = None  # the general path below names the problem
        if d is not None and d.is_finite():
            return d
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, bool):
        raise MoneyError(f"{field_name}: expected a number, got a boolean")
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, (float, str)):
        text = str(value).strip()
        if not text:
            raise MoneyError(f"{field_name}: empty value; give a number such as 12.50")
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise MoneyError(
                f"{field_name}: {text[:40]!r} is not a number; give a plain decimal such as 12.50"
            ) from None
    else:
        raise MoneyError(f"{field_name}: expected a number, got {type(value).__name__}")
    if not d.is_finite():
        raise MoneyError(f"{field_name}: {d} is not a finite amount; NaN and infinity cannot be billed")
    return d


def check_currency(code: str, *, field_name: str = "currency", extra: Iterable[str] = ()) -> str:
    """Return the upper-cased ISO-4217 code or raise :class:`MoneyError` naming the field."""
    if type(code) is str and code in ISO_4217:  # the common case: already a code
        return code
    if not isinstance(code, str) or not code.strip():
        raise MoneyError(f"{field_name}: missing currency; give an ISO-4217 code such as USD")
    c = code.strip().upper()
    if c not in ISO_4217 and c not in set(extra):
        raise MoneyError(f"{field_name}: {code[:12]!r} is not an ISO-4217 currency code (for example USD, EUR)")
    return c


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount of one currency. Negative amounts (credits, refunds) are valid."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", to_decimal(self.amount))
        object.__setattr__(self, "currency", check_currency(self.currency))

    @classmethod
    def of(cls, amount: Any, currency: str = "USD") -> Money:
        return cls(to_decimal(amount), currency)

    @classmethod
    def zero(cls, currency: str = "USD") -> Money:
        return cls(Decimal(0), currency)

    def _same(self, other: Money) -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatchError(
                f"cannot combine {self.currency} and {other.currency}; convert with an FxTable first"
            )

    def __add__(self, other: Money) -> Money:
        self._same(other)
        with localcontext(MONEY_CONTEXT):
            return Money(self.amount + other.amount, self.currency)

    def __radd__(self, other: Any) -> Money:
        if other == 0:  # support sum()
            return self
        return self.__add__(other)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        with localcontext(MONEY_CONTEXT):
            return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: Any) -> Money:
        if isinstance(factor, Money):
            raise TypeError("cannot multiply money by money")
        with localcontext(MONEY_CONTEXT):
            return Money(self.amount * to_decimal(factor, field_name="factor"), self.currency)

    __rmul__ = __mul__

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def rounded(self, places: int | None = None) -> Decimal:
        """The amount rounded HALF_EVEN for display (default: the currency's minor unit)."""
        p = _DISPLAY_DECIMALS.get(self.currency, 2) if places is None else places
        return self.amount.quantize(Decimal(1).scaleb(-p), rounding=ROUND_HALF_EVEN, context=MONEY_CONTEXT)

    def format(self, places: int | None = None) -> str:
        """Human text, for example ``1,234.50 USD``."""
        return f"{self.rounded(places):,} {self.currency}"

    def to_json(self) -> dict[str, str]:
        """Exact, string-typed form for XCom, triggers and JSON reports."""
        return {"amount": decimal_text(self.amount), "currency": self.currency}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Money:
        return cls.of(data["amount"], data["currency"])

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def decimal_text(d: Decimal) -> str:
    """Canonical exact text of a Decimal: plain notation, no trailing zeros ("40", "0.0000001", "-1.5").

    The same value reads the same from every backend (PostgreSQL pads NUMERIC to its scale, DuckDB sums
    carry 16 decimals, SQLite keeps what was written).
    """
    if not d:
        return "0"
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    """Sum Decimals with enough precision that no digit is lost."""
    total = Decimal(0)
    with localcontext(MONEY_CONTEXT):
        for a in amounts:
            total += a
    return total


class MoneyBag:
    """Per-currency totals: the only way several currencies are carried together (never summed)."""

    __slots__ = ("_totals",)

    def __init__(self, items: Iterable[Money] = ()) -> None:
        self._totals: dict[str, Decimal] = {}
        for m in items:
            self.add(m)

    def add(self, money: Money) -> None:
        self.add_raw(money.amount, money.currency)

    def add_raw(self, amount: Decimal, currency: str) -> None:
        with localcontext(MONEY_CONTEXT):
            self._totals[currency] = self._totals.get(currency, Decimal(0)) + amount

    def merge(self, other: MoneyBag) -> None:
        for cur, amt in other._totals.items():
            self.add_raw(amt, cur)

    @property
    def currencies(self) -> list[str]:
        return sorted(self._totals)

    def get(self, currency: str) -> Money:
        return Money(self._totals.get(currency, Decimal(0)), currency)

    def items(self) -> list[Money]:
        return [Money(self._totals[c], c) for c in self.currencies]

    def to_json(self) -> dict[str, str]:
        return {c: decimal_text(self._totals[c]) for c in self.currencies}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MoneyBag) and self._totals == other._totals

    def __repr__(self) -> str:
        return f"MoneyBag({self.to_json()})"


@dataclass(frozen=True)
class FxRate:
    """One conversion rate: 1 ``base`` = ``rate`` ``quote`` on ``date``, from ``source``."""

    base: str
    quote: str
    rate: Decimal
    date: dt.date
    source: str


@dataclass
class FxTable:
    """Explicit, dated, sourced exchange rates. The only way money changes currency."""

    rates: list[FxRate] = field(default_factory=list)

    def add(self, base: str, quote: str, rate: Any, date: dt.date, source: str) -> None:
        r = to_decimal(rate, field_name="rate")
        if r <= 0:
            raise MoneyError(f"fx rate {base}->{quote}: must be positive, got {r}")
        self.rates.append(FxRate(check_currency(base), check_currency(quote), r, date, source))

    def rate(self, base: str, quote: str, on: dt.date) -> FxRate:
        """The latest rate dated on or before ``on`` (inverse rates are used when only those exist)."""
        if base == quote:
            return FxRate(base, quote, Decimal(1), on, "identity")
        best: FxRate | None = None
        for r in self.rates:
            if r.date > on:
                continue
            if (r.base, r.quote) == (base, quote):
                cand = r
            elif (r.base, r.quote) == (quote, base):
                with localcontext(MONEY_CONTEXT):
                    cand = FxRate(base, quote, Decimal(1) / r.rate, r.date, r.source + " (inverse)")
            else:
                continue
            if best is None or cand.date > best.date:
                best = cand
        if best is None:
            raise MoneyError(f"no fx rate {base}->{quote} on or before {on}; add one to the FX table")
        return best

    def convert(self, money: Money, to: str, on: dt.date) -> Money:
        r = self.rate(money.currency, check_currency(to), on)
        with localcontext(MONEY_CONTEXT):
            return Money(money.amount * r.rate, r.quote)
