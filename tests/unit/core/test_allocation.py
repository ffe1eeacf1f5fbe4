"""Attribution from tags and config mappings (never overwriting explicit owners) and exact shared splits."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finops_provider.core.allocation import Attributor, split_shared
from finops_provider.core.config import parse_config
from finops_provider.core.focus import BadRow
from finops_provider.core.money import Money
from finops_provider.core.records import UNALLOCATED

CONFIG = parse_config(
    {
        "teams": {"data": {"cost_center": "CC-100"}, "web": {"cost_center": "CC-200"}},
        "dags": {
            "nightly_etl": {"team": "data", "platform": "snowflake"},
            "ml_*": {"team": "ml", "cost_center": "CC-300"},
        },
    }
)


@pytest.fixture
def attributor() -> Attributor:
    return Attributor(CONFIG)


def test_fills_every_column_from_tags(attributor: Attributor, make_record) -> None:
    r = attributor.apply(
        make_record(
            tags={
                "team": "web",
                "cost_center": "CC-9",
                "airflow_dag_id": "etl",
                "airflow_task_id": "load",
                "airflow_run_id": "scheduled__2024-09-01",
                "job_id": "job-42",
            }
        )
    )
    assert (r.x_team, r.x_cost_center, r.x_dag_id, r.x_task_id, r.x_run_id, r.x_job_id) == (
        "web",
        "CC-9",
        "etl",
        "load",
        "scheduled__2024-09-01",
        "job-42",
    )


def test_first_listed_tag_key_wins(attributor: Attributor, make_record) -> None:
    r = attributor.apply(make_record(tags={"owner_team": "c", "Team": "b", "team": "a"}))
    assert r.x_team == "a"
    r = attributor.apply(make_record(tags={"owner_team": "c", "Team": "b"}))
    assert r.x_team == "b"


def test_empty_tag_value_is_not_an_owner(attributor: Attributor, make_record) -> None:
    r = attributor.apply(make_record(tags={"team": "", "Team": "b"}))
    assert r.x_team == "b"
    r = attributor.apply(make_record(tags={"team": ""}))
    assert (r.x_team, r.x_cost_center) == (None, None)


def test_team_mapping_gives_cost_center(attributor: Attributor, make_record) -> None:
    r = attributor.apply(make_record(tags={"team": "data"}))
    assert (r.x_team, r.x_cost_center) == ("data", "CC-100")


@pytest.mark.parametrize(
    ("dag_id", "team", "cost_center", "platform"),
    [
        pytest.param("nightly_etl", "data", "CC-100", "snowflake", id="exact-dag-then-team-cost-center"),
        pytest.param("ml_train", "ml", "CC-300", None, id="glob-dag-with-cost-center"),
        pytest.param("reporting", None, None, None, id="unmapped-dag"),
    ],
)
def test_dag_mapping(attributor: Attributor, make_record, dag_id: str, team, cost_center, platform) -> None:
    r = attributor.apply(make_record(x_dag_id=dag_id))
    assert (r.x_team, r.x_cost_center, r.x_platform) == (team, cost_center, platform)
    assert r.x_job_id == dag_id  # the DAG is the job when nothing more specific is known


def test_dag_from_tag_then_dag_mapping(attributor: Attributor, make_record) -> None:
    r = attributor.apply(make_record(tags={"airflow_dag_id": "ml_features"}))
    assert (r.x_dag_id, r.x_team, r.x_cost_center, r.x_job_id) == ("ml_features", "ml", "CC-300", "ml_features")


@pytest.mark.parametrize(
    ("explicit", "expected"),
    [
        pytest.param({"x_team": "finance"}, ("finance", None, "snowflake"), id="team"),
        pytest.param({"x_cost_center": "CC-X"}, ("web", "CC-X", "snowflake"), id="cost-center"),
        pytest.param({"x_platform": "bigquery"}, ("web", "CC-200", "bigquery"), id="platform"),
        pytest.param(
            {"x_team": "finance", "x_cost_center": "CC-F", "x_platform": "k8s"}, ("finance", "CC-F", "k8s"), id="all"
        ),
    ],
)
def test_explicit_values_are_never_overwritten(attributor: Attributor, make_record, explicit, expected) -> None:
    # tags, DAG mapping and team mapping all disagree with the explicit values
    r = attributor.apply(make_record(x_dag_id="nightly_etl", tags={"team": "web", "cost_center": ""}, **explicit))
    assert (r.x_team, r.x_cost_center, r.x_platform) == expected


def test_explicit_job_and_dag_kept(attributor: Attributor, make_record) -> None:
    r = attributor.apply(make_record(x_dag_id="mine", x_job_id="job-1", tags={"airflow_dag_id": "theirs", "job": "j"}))
    assert (r.x_dag_id, r.x_job_id) == ("mine", "job-1")


def test_custom_attribution_keys(make_record) -> None:
    att = Attributor(parse_config({"attribution": {"team": ["business_unit"], "cost_center": ["cc"]}}))
    r = att.apply(make_record(tags={"team": "ignored", "business_unit": "ViennaAI", "cc": "7"}))
    assert (r.x_team, r.x_cost_center) == ("ViennaAI", "7")


def test_apply_all_passes_bad_rows_through(attributor: Attributor, make_record) -> None:
    bad = BadRow(3, "BilledCost", "NaN", {})
    out = list(attributor.apply_all([make_record(tags={"team": "data"}), bad]))
    assert out[1] is bad
    assert out[0].x_team == "data"


def test_attribution_never_changes_cost_or_identity(attributor: Attributor, sample_records) -> None:
    before = [(r.billed_cost, r.effective_cost, r.identity()) for r in sample_records]
    after = [(r.billed_cost, r.effective_cost, r.identity()) for r in attributor.apply_all(sample_records)]
    assert after == before


# ------------------------------------------------------------------ split_shared
def test_split_in_proportion() -> None:
    parts = split_shared(Money.of("100.00"), {"a": Decimal(1), "b": Decimal(3), "zero": Decimal(0)})
    assert parts == {"a": Money.of("25"), "b": Money.of("75"), "zero": Money.zero()}


def test_split_remainder_goes_to_biggest_owner() -> None:
    parts = split_shared(Money.of("1.00"), {"a": Decimal(1), "b": Decimal(1), "c": Decimal(1)})
    assert parts["a"] == parts["b"] == Money.of("0.3333333333")
    assert parts["c"] == Money.of("0.3333333334")  # ties broken by name: the largest key takes the remainder
    assert sum(parts.values(), Money.zero()) == Money.of("1.00")


def test_split_without_positive_weight_is_unallocated() -> None:
    assert split_shared(Money.of("5", "EUR"), {"a": Decimal(0)}) == {UNALLOCATED: Money.of("5", "EUR")}
    assert split_shared(Money.of("5"), {}) == {UNALLOCATED: Money.of("5")}


_amount = st.builds(lambda i, s: Decimal(f"{i}E-{s}"), st.integers(-(10**22) + 1, 10**22 - 1), st.integers(0, 16))
_weights = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3),
    st.builds(lambda i, s: Decimal(f"{i}E-{s}"), st.integers(0, 10**12), st.integers(0, 6)),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(amount=_amount, weights=_weights, currency=st.sampled_from(["USD", "JPY"]))
def test_split_conserves_exactly(amount: Decimal, weights: dict[str, Decimal], currency: str) -> None:
    total = Money(amount, currency)
    parts = split_shared(total, weights)
    assert sum(Fraction(p.amount) for p in parts.values()) == Fraction(amount)
    assert all(p.currency == currency for p in parts.values())
    if any(w > 0 for w in weights.values()):
        assert set(parts) == set(weights)
        for k, w in weights.items():
            if w == 0:
                assert parts[k].amount == 0
    else:
        assert parts == {UNALLOCATED: total}
