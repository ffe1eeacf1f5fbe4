"""Rate cards: the shipped prices with their source, overrides, regions and effective dates."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from finops_provider.core.money import Money
from finops_provider.core.pricing import RATECARD_DIR, PriceNotFoundError, RateCard, parse_card

ON = dt.date(2025, 6, 1)
SHIPPED_CARDS = sorted(p.name for p in RATECARD_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def card() -> RateCard:
    return RateCard.load()


@pytest.mark.parametrize("name", [pytest.param(n, id=n) for n in SHIPPED_CARDS])
def test_every_shipped_card_loads(name: str) -> None:
    data = yaml.safe_load((RATECARD_DIR / name).read_text(encoding="utf-8"))
    prices, _ = parse_card(data, name)
    assert prices, f"{name} has no prices"
    for p in prices:
        assert p.platform == Path(name).stem
        assert p.amount.amount >= 0
        assert p.amount.currency == "USD"
        assert p.source and p.version and p.unit


def test_shipped_cards_are_the_expected_platforms() -> None:
    assert SHIPPED_CARDS == [
        "aws.yaml",
        "bigquery.yaml",
        "databricks.yaml",
        "fabric.yaml",
        "kubernetes.yaml",
        "redshift.yaml",
        "snowflake.yaml",
        "synapse.yaml",
    ]


@pytest.mark.parametrize(
    ("platform", "sku", "amount", "unit", "source_part"),
    [
        pytest.param(
            "databricks", "JOBS_COMPUTE", "0.15", "DBU", "databricks.com/product/pricing", id="databricks-jobs"
        ),
        pytest.param("snowflake", "CREDIT_ENTERPRISE", "3.00", "credit", "snowflake.com/pricing", id="snowflake-ent"),
        pytest.param(
            "bigquery", "ON_DEMAND_TIB", "6.25", "TiB", "cloud.google.com/bigquery/pricing", id="bq-on-demand"
        ),
        pytest.param("kubernetes", "cpu_core_hour", "0.031611", "core-hour", "OpenCost", id="k8s-cpu"),
        pytest.param(
            "redshift", "dc2.large", "0.25", "node-hour", "aws.amazon.com/redshift/pricing", id="redshift-dc2"
        ),
        pytest.param("fabric", "CU_HOUR", "0.18", "CU-hour", "microsoft-fabric", id="fabric-cu"),
        pytest.param("synapse", "SPARK_VCORE_HOUR", "0.143", "vCore-hour", "synapse-analytics", id="synapse-spark"),
    ],
)
def test_documented_prices(card: RateCard, platform: str, sku: str, amount: str, unit: str, source_part: str) -> None:
    p = card.price(platform, sku, on=ON)
    assert p.amount == Money.of(amount, "USD")
    assert str(p.amount.amount) == amount
    assert p.unit == unit
    assert source_part in p.source
    assert p.region == "*"


def test_lookup_is_case_insensitive(card: RateCard) -> None:
    assert card.price("Databricks", "jobs_compute", on=ON).amount == Money.of("0.15")


def test_price_cost_is_exact(card: RateCard) -> None:
    p = card.price("kubernetes", "cpu_core_hour", on=ON)
    assert p.cost("2.5") == Money.of("0.0790275")
    assert p.cost(0.1) == Money.of("0.0031611")
    assert "kubernetes/cpu_core_hour 0.031611 USD per core-hour" in p.describe()


def test_auxiliary_rates(card: RateCard) -> None:
    assert card.rate("snowflake", "warehouse_credits_per_hour")["X-SMALL"] == "1"
    assert card.rate("bigquery", "free_tib_per_month") == "1"
    with pytest.raises(PriceNotFoundError, match="no rate 'nope' for snowflake"):
        card.rate("snowflake", "nope")


def test_override_beats_shipped_price() -> None:
    card = RateCard.load(
        overrides=[
            {
                "platform": "databricks",
                "sku": "JOBS_COMPUTE",
                "unit": "DBU",
                "price": "0.12",
                "source": "contract 2025",
            },
        ]
    )
    p = card.price("databricks", "JOBS_COMPUTE", on=ON)
    assert p.amount == Money.of("0.12")
    assert (p.source, p.version) == ("contract 2025", "override")
    # other SKUs of the platform still come from the shipped card
    assert card.price("databricks", "SQL_PRO", on=ON).amount == Money.of("0.55")


def test_region_specific_beats_wildcard() -> None:
    card = RateCard.load(
        overrides=[
            {
                "platform": "snowflake",
                "sku": "CREDIT_ENTERPRISE",
                "unit": "credit",
                "price": "3.30",
                "region": "eu-west-1",
            },
            {"platform": "snowflake", "sku": "CREDIT_ENTERPRISE", "unit": "credit", "price": "3.10"},
        ]
    )
    assert card.price("snowflake", "CREDIT_ENTERPRISE", region="eu-west-1", on=ON).amount == Money.of("3.30")
    assert card.price("snowflake", "CREDIT_ENTERPRISE", region="us-east-1", on=ON).amount == Money.of("3.10")
    assert card.price("snowflake", "CREDIT_ENTERPRISE", on=ON).amount == Money.of("3.10")


def test_region_only_override_leaves_other_regions_on_shipped_card() -> None:
    card = RateCard.load(
        overrides=[
            {
                "platform": "snowflake",
                "sku": "CREDIT_ENTERPRISE",
                "unit": "credit",
                "price": "3.30",
                "region": "eu-west-1",
            },
        ]
    )
    assert card.price("snowflake", "CREDIT_ENTERPRISE", region="eu-west-1", on=ON).amount == Money.of("3.30")
    assert card.price("snowflake", "CREDIT_ENTERPRISE", region="us-east-1", on=ON).amount == Money.of("3.00")


@pytest.mark.parametrize(
    ("on", "expected"),
    [
        pytest.param(dt.date(2024, 12, 31), "0.15", id="before-new-price"),
        pytest.param(dt.date(2025, 1, 1), "0.17", id="first-day-of-new-price"),
        pytest.param(dt.date(2025, 12, 31), "0.17", id="last-day-of-new-price"),
        pytest.param(dt.date(2026, 1, 1), "0.20", id="end-is-exclusive"),
    ],
)
def test_effective_dates_respected(on: dt.date, expected: str) -> None:
    card = RateCard.load(
        overrides=[
            {
                "platform": "databricks",
                "sku": "JOBS_COMPUTE",
                "unit": "DBU",
                "price": "0.17",
                "effective_from": "2025-01-01",
                "effective_to": "2026-01-01",
            },
            {
                "platform": "databricks",
                "sku": "JOBS_COMPUTE",
                "unit": "DBU",
                "price": "0.20",
                "effective_from": "2026-01-01",
            },
        ]
    )
    assert card.price("databricks", "JOBS_COMPUTE", on=on).amount == Money.of(expected)


def test_latest_effective_from_wins_within_a_pool() -> None:
    card = RateCard.load(
        overrides=[
            {
                "platform": "fabric",
                "sku": "CU_HOUR",
                "unit": "CU-hour",
                "price": "0.16",
                "effective_from": "2024-01-01",
            },
            {
                "platform": "fabric",
                "sku": "CU_HOUR",
                "unit": "CU-hour",
                "price": "0.19",
                "effective_from": "2025-03-01",
            },
        ]
    )
    assert card.price("fabric", "CU_HOUR", on=dt.date(2025, 2, 28)).amount == Money.of("0.16")
    assert card.price("fabric", "CU_HOUR", on=dt.date(2025, 3, 1)).amount == Money.of("0.19")


def test_shipped_price_not_in_force_before_its_card() -> None:
    with pytest.raises(PriceNotFoundError, match=r"no price for bigquery/ON_DEMAND_TIB \(region \*, 2023-07-04\)"):
        RateCard.load().price("bigquery", "ON_DEMAND_TIB", on=dt.date(2023, 7, 4))
    assert RateCard.load().price("bigquery", "ON_DEMAND_TIB", on=dt.date(2023, 7, 5)).amount == Money.of("6.25")


def test_price_not_found_lists_known_skus(card: RateCard) -> None:
    with pytest.raises(PriceNotFoundError) as ei:
        card.price("databricks", "GPU_MAGIC", on=ON)
    msg = str(ei.value)
    assert "no price for databricks/GPU_MAGIC" in msg
    assert "known SKUs for databricks: ALL_PURPOSE_COMPUTE, JOBS_COMPUTE, SQL_CLASSIC, SQL_PRO, SQL_SERVERLESS" in msg
    assert "rate_cards.overrides" in msg


def test_unknown_platform_says_none_known(card: RateCard) -> None:
    with pytest.raises(PriceNotFoundError, match="known SKUs for teradata: none"):
        card.price("teradata", "X", on=ON)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        pytest.param({"sku": "X", "unit": "u", "price": "1"}, "missing 'platform'", id="no-platform"),
        pytest.param({"platform": "x", "sku": "X", "unit": "u", "price": "-1"}, "is negative", id="negative"),
        pytest.param({"platform": "x", "sku": "X", "unit": "u", "price": "NaN"}, "not a finite amount", id="nan"),
        pytest.param({"platform": "x", "unit": "u", "price": "1"}, "each price needs sku, unit and price", id="no-sku"),
        pytest.param({"platform": "x", "sku": "X", "unit": "u"}, "missing 'price'", id="no-price"),
        pytest.param(
            {"platform": "x", "sku": "X", "unit": "u", "price": "1", "currency": "EURO"}, "ISO-4217", id="bad-currency"
        ),
        pytest.param(
            {"platform": "x", "sku": "X", "unit": "u", "price": "1", "effective_from": "June"},
            "not a date",
            id="bad-date",
        ),
    ],
)
def test_bad_overrides_name_the_entry(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=r"rate_cards\.overrides\[0\]") as ei:
        RateCard.load(overrides=[override])
    assert message in str(ei.value)


def test_all_prices_lists_overrides_first() -> None:
    card = RateCard.load(overrides=[{"platform": "aws", "sku": "X", "unit": "u", "price": "1"}])
    allp = card.all_prices()
    assert allp[0].sku == "X"
    assert len(allp) == 1 + len(RateCard.load().all_prices())
    assert Decimal("0.01") in {p.amount.amount for p in allp if p.platform == "aws"}
