"""A small seeded run of the evaluation harness (bench/anomaly_eval.py): ours beats both baselines."""

from __future__ import annotations

import pytest

from bench.anomaly_eval import KINDS, forecast_mape, generate, score


@pytest.fixture(scope="module")
def scopes():
    return generate(seed=3, n_dags=18, days=120, kind="all")


def test_generator_is_seeded_and_labelled(scopes) -> None:
    again = generate(seed=3, n_dags=18, days=120, kind="all")
    assert [s.total for s in scopes] == [s.total for s in again]
    kinds = {ev.kind for s in scopes for ev in s.events}
    assert len(kinds) >= 4 and kinds <= set(KINDS)
    assert all(len(s.total) == 120 for s in scopes)
    assert all(sum(v[i] for v in s.tasks.values()) == s.total[i] for s in scopes for i in (0, 60, 119))


def test_robust_beats_both_baselines(scopes) -> None:
    ours = score(scopes, "robust")
    seed_rule = score(scopes, "threshold_pct")
    sigma = score(scopes, "mean_3sigma")
    assert ours.events >= 8
    assert ours.precision >= 0.8, (ours.alerts, ours.true_alerts)
    assert ours.recall >= 0.8
    assert ours.f1 > seed_rule.f1 and ours.f1 > sigma.f1, (ours.f1, seed_rule.f1, sigma.f1)
    assert ours.false_per_scope_90d <= 1


def test_spikes_are_found_the_day_they_happen() -> None:
    s = score(generate(seed=5, n_dags=12, days=110, kind="spike"), "robust")
    assert s.events >= 3 and s.found == s.events and set(s.delays) == {0}


def test_forecast_beats_ten_percent_from_day_ten(scopes) -> None:
    mape = forecast_mape(scopes, at_days=(10, 21))
    assert mape["seasonal"][10] <= 10 and mape["seasonal"][21] <= mape["seasonal"][10]
