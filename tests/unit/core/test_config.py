"""config.yaml: typed, frozen, safely loaded; every error names the file, the key path and the fix."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from finops_provider.core.config import (
    DEFAULT_THRESHOLDS,
    ConfigError,
    FinOpsConfig,
    load_config,
    parse_config,
)

GOOD = """
currency: EUR
teams:
  data: {cost_center: CC-100, slack_channel: "#data-costs"}
  web: {cost_center: CC-200}
dags:
  nightly_etl: {team: data, platform: snowflake}
  "etl_*": {team: data}
  "ml_*": {team: ml, cost_center: CC-300}
budgets:
  - name: data-monthly
    scope: {team: data}
    amount: "1000.50"
    currency: EUR
    thresholds:
      - {pct: 50, actions: notify}
      - {pct: 100, actions: [notify, ticket]}
      - {pct: 120, actions: [pause_now], basis: forecasted}
anomaly: {threshold_pct: 200, min_impact: "2.5", baseline_periods: 7}
rate_cards:
  overrides:
    - {platform: databricks, sku: JOBS_COMPUTE, unit: DBU, price: "0.12"}
"""


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


def test_good_config_loads_typed_and_frozen(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.currency == "EUR"
    (b,) = cfg.budgets
    assert (b.name, b.amount, b.currency, b.period, b.cost_basis) == (
        "data-monthly",
        Decimal("1000.50"),
        "EUR",
        "month",
        "billed",
    )
    assert [(t.pct, t.actions, t.basis) for t in b.thresholds] == [
        (Decimal(50), ("notify",), "actual"),
        (Decimal(100), ("notify", "ticket"), "actual"),
        (Decimal(120), ("pause_now",), "forecasted"),
    ]
    assert (cfg.anomaly.threshold_pct, cfg.anomaly.min_impact, cfg.anomaly.baseline_periods) == (
        Decimal(200),
        Decimal("2.5"),
        7,
    )
    assert cfg.team_cost_center("data") == "CC-100"
    assert cfg.team_cost_center("nobody") is None
    with pytest.raises(ValidationError):
        cfg.currency = "USD"  # type: ignore[misc]


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == FinOpsConfig()
    assert cfg.currency == "USD"
    assert cfg.budgets == ()
    assert cfg.anomaly.threshold_pct == Decimal(150)
    assert [(t.pct, t.basis) for t in DEFAULT_THRESHOLDS] == [
        (Decimal(50), "actual"),
        (Decimal(80), "actual"),
        (Decimal(100), "actual"),
        (Decimal(100), "forecasted"),
    ]
    assert parse_config(None) == FinOpsConfig()


@pytest.mark.parametrize(
    ("dag_id", "team", "cost_center"),
    [
        pytest.param("nightly_etl", "data", None, id="exact"),
        pytest.param("etl_orders", "data", None, id="glob"),
        pytest.param("ml_train", "ml", "CC-300", id="other-glob"),
        pytest.param("ETL_orders", None, None, id="glob-is-case-sensitive"),
        pytest.param("reporting", None, None, id="no-match"),
        pytest.param(None, None, None, id="no-dag"),
    ],
)
def test_dag_glob_mapping(tmp_path: Path, dag_id: str | None, team: str | None, cost_center: str | None) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    got = cfg.dag(dag_id)
    assert (got.team if got else None, got.cost_center if got else None) == (team, cost_center)


def test_exact_dag_name_beats_an_earlier_glob() -> None:
    cfg = parse_config({"dags": {"etl_*": {"team": "glob"}, "etl_orders": {"team": "exact"}}})
    assert cfg.dag("etl_orders").team == "exact"
    assert cfg.dag("etl_users").team == "glob"


BUDGET = "budgets:\n  - name: b\n    scope: {team: data}\n    amount: 10\n"


@pytest.mark.parametrize(
    ("text", "key", "problem", "fix"),
    [
        pytest.param(
            BUDGET + "    colour: red\n",
            "budgets.0.colour",
            "Extra inputs are not permitted",
            "remove the key or check its spelling",
            id="unknown-key",
        ),
        pytest.param(
            "tems: {}\n",
            "tems",
            "Extra inputs are not permitted",
            "remove the key or check its spelling",
            id="unknown-top-level-key",
        ),
        pytest.param(
            BUDGET + "    thresholds: [{pct: 80, actions: [explode]}]\n",
            "budgets.0.thresholds.0.actions",
            "unknown action 'explode'; use one of notify, ticket",
            "fix the value",
            id="bad-action",
        ),
        pytest.param(
            BUDGET.replace("amount: 10", "amount: -5"),
            "budgets.0.amount",
            "amount must be > 0",
            "fix the value",
            id="negative-amount",
        ),
        pytest.param(
            BUDGET.replace("amount: 10", "amount: .nan"),
            "budgets.0.amount",
            "not a finite amount",
            "fix the value",
            id="nan-amount",
        ),
        pytest.param(
            BUDGET + "    currency: US\n",
            "budgets.0.currency",
            "'US' is not an ISO-4217 currency code",
            "fix the value",
            id="bad-currency",
        ),
        pytest.param(
            "currency: DOLLARS\n",
            "currency",
            "not an ISO-4217 currency code",
            "fix the value",
            id="bad-top-level-currency",
        ),
        pytest.param(
            BUDGET + "    period: year\n",
            "budgets.0.period",
            "Input should be 'run', 'day', 'week' or",
            "use one of the allowed values",
            id="bad-period",
        ),
        pytest.param(
            BUDGET.replace("{team: data}", "{owner: data}"),
            "budgets.0.scope",
            "unknown scope key 'owner'",
            "fix the value",
            id="bad-scope-key",
        ),
        pytest.param(
            BUDGET.replace("{team: data}", "{tag: prod}"),
            "budgets.0.scope",
            "scope.tag must be a mapping",
            "fix the value",
            id="bad-tag-scope",
        ),
        pytest.param(
            "budgets:\n  - {scope: {team: a}, amount: 1}\n",
            "budgets.0.name",
            "Field required",
            "add this key",
            id="missing-name",
        ),
        pytest.param(
            BUDGET + "    thresholds: [{pct: 0}]\n",
            "budgets.0.thresholds.0.pct",
            "pct must be > 0",
            "fix the value",
            id="zero-pct",
        ),
        pytest.param(
            BUDGET + BUDGET.replace("budgets:\n", ""),
            "(top level)",
            "budget names must be unique",
            "fix the value",
            id="duplicate-budget",
        ),
        pytest.param(
            "rate_cards: {prices: []}\n",
            "(top level)",
            "rate_cards.prices: unknown key",
            "fix the value",
            id="bad-rate-cards-key",
        ),
    ],
)
def test_errors_name_file_key_and_fix(tmp_path: Path, text: str, key: str, problem: str, fix: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    lines = str(ei.value).splitlines()
    matching = [ln for ln in lines if ln.startswith(f"{path}: {key}: ")]
    assert matching, lines
    assert problem in matching[0]
    assert matching[0].endswith(f"({fix})")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, BUDGET.replace("amount: 10", "amount: -5") + "    currency: US\n    colour: red\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    keys = sorted(ln.split(": ")[1] for ln in str(ei.value).splitlines())
    assert keys == ["budgets.0.amount", "budgets.0.colour", "budgets.0.currency"]


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "budgets:\n  - name: a\n    scope: {team: data\n    amount: 5\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: line 4, column 11: not valid YAML")
    assert msg.endswith("fix the syntax")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"the top level must be a mapping"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(ei.value) == f"{path}: no such file; pass the path of your config.yaml (see README, Configuration)"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("currency: EUR # é\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


@pytest.mark.parametrize(
    "tag",
    [
        pytest.param("!!python/object/apply:os.system", id="object-apply"),
        pytest.param("!!python/object/new:os.system", id="object-new"),
    ],
)
def test_python_tags_are_rejected_and_never_run(tmp_path: Path, tag: str) -> None:
    marker = tmp_path / "pwned"
    path = _write(tmp_path, f'teams:\n  data: {tag} ["touch {marker}"]\n')
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert "could not determine a constructor" in str(ei.value)
    assert str(ei.value).startswith(f"{path}: line 2")
    assert not marker.exists()
