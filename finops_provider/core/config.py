"""``config.yaml``: budgets, ownership mappings, rate-card overrides, ledger and notification routes.

Loaded with ``yaml.safe_load`` (never executes code) into frozen pydantic models. Every error names the
file, the key path and the fix.

Paths in a config file are confined: a file it names (today the SQLite file of ``ledger.url``) must lie inside
``$FINOPS_HOME`` or the config file's own folder, with no ``..`` component and no symlink leading out of those
folders; a relative path resolves against the config file's folder, never the process's working directory.
Paths from the environment, airflow.cfg, connections, DAG code or the command line are the operator's own
choice and are not confined.
"""

from __future__ import annotations

import fnmatch
import os
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finops_provider.core.money import MoneyError, check_currency, to_decimal

ACTIONS = ("notify", "ticket", "incident", "approval", "pause_after_run", "pause_now", "fail_task")
PERIODS = ("run", "day", "week", "month")
SCOPE_KEYS = ("dag", "task", "job", "team", "cost_center", "platform", "service", "tag")


class ConfigError(ValueError):
    """config.yaml is invalid. The message names the file, the key and the fix."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _dec(v: Any, field: str) -> Decimal:
    try:
        return to_decimal(v, field_name=field)
    except MoneyError as e:
        raise ValueError(str(e)) from None


class Threshold(_Frozen):
    """At ``pct`` % of the budget (actual or forecasted spend), perform ``actions``."""

    pct: Decimal
    actions: tuple[str, ...] = ("notify",)
    basis: Literal["actual", "forecasted"] = "actual"

    @field_validator("pct", mode="before")
    @classmethod
    def _pct(cls, v: Any) -> Decimal:
        d = _dec(v, "pct")
        if d <= 0:
            raise ValueError("pct must be > 0 (for example 80 for 80 %)")
        return d

    @field_validator("actions", mode="before")
    @classmethod
    def _actions(cls, v: Any) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else list(v)
        for a in items:
            if a not in ACTIONS:
                raise ValueError(f"unknown action {a!r}; use one of {', '.join(ACTIONS)}")
        return tuple(items)


DEFAULT_THRESHOLDS = (
    Threshold(pct=Decimal(50), actions=("notify",)),
    Threshold(pct=Decimal(80), actions=("notify",)),
    Threshold(pct=Decimal(100), actions=("notify", "ticket")),
    Threshold(pct=Decimal(100), actions=("notify",), basis="forecasted"),
)


class BudgetConfig(_Frozen):
    """A budget as code: scope, period, amount + currency, graded thresholds."""

    name: str = Field(min_length=1, max_length=200)
    scope: dict[str, Any]
    period: Literal["run", "day", "week", "month"] = "month"
    amount: Decimal
    currency: str = "USD"
    cost_basis: Literal["billed", "effective", "list", "contracted"] = "billed"
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, v: Any) -> Decimal:
        d = _dec(v, "amount")
        if d <= 0:
            raise ValueError("amount must be > 0")
        return d

    @field_validator("currency")
    @classmethod
    def _cur(cls, v: str) -> str:
        try:
            return check_currency(v)
        except MoneyError as e:
            raise ValueError(str(e)) from None

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            raise ValueError(f"scope is empty; give at least one of {', '.join(SCOPE_KEYS)} (use {{}} only for 'all')")
        for k, val in v.items():
            if k not in SCOPE_KEYS and k != "all":
                raise ValueError(f"unknown scope key {k!r}; use one of {', '.join(SCOPE_KEYS)}")
            if k == "tag" and not (isinstance(val, dict) and val):
                raise ValueError("scope.tag must be a mapping such as {env: prod}")
        return v


class TeamConfig(_Frozen):
    cost_center: str | None = None
    slack_channel: str | None = None
    jira_project: str | None = None


class DagConfig(_Frozen):
    team: str | None = None
    cost_center: str | None = None
    platform: str | None = None


class AttributionConfig(_Frozen):
    """Which tag/label keys carry ownership (first present key wins)."""

    team: tuple[str, ...] = ("team", "Team", "owner_team", "x_team")
    cost_center: tuple[str, ...] = ("cost_center", "CostCenter", "cost-center", "costcenter", "business_unit")
    dag_id: tuple[str, ...] = ("airflow_dag_id", "dag_id", "airflow-dag-id")
    task_id: tuple[str, ...] = ("airflow_task_id", "task_id", "airflow-task-id")
    run_id: tuple[str, ...] = ("airflow_run_id", "run_id", "airflow-run-id")
    job_id: tuple[str, ...] = ("job_id", "job", "app", "application")


class AnomalyConfig(_Frozen):
    """``detector: robust`` (default; gates z_threshold, min_change_pct, min_impact) or ``threshold_pct`` (the
    seed's rule: above ``threshold_pct`` % of the median of ``baseline_periods`` and ``min_impact``)."""

    detector: Literal["robust", "threshold_pct"] = "robust"
    threshold_pct: Decimal = Decimal(150)
    min_impact: Decimal = Decimal(1)
    baseline_periods: int = Field(default=14, ge=3, le=366)
    z_threshold: float = Field(default=4.0, gt=0)
    min_change_pct: Decimal = Decimal(30)
    warmup_periods: int | None = Field(default=None, ge=1)
    cooldown_periods: int = Field(default=3, ge=0)

    @field_validator("threshold_pct", "min_impact", "min_change_pct", mode="before")
    @classmethod
    def _d(cls, v: Any) -> Decimal:
        return _dec(v, "value")


class LedgerConfig(_Frozen):
    url: str | None = None
    airflow_conn_id: str = "finops_ledger_default"


class NotificationRoute(_Frozen):
    match: dict[str, str] = Field(default_factory=dict)
    slack_conn_id: str | None = None
    jira_conn_id: str | None = None
    jira_project: str | None = None
    servicenow_conn_id: str | None = None


class FinOpsConfig(_Frozen):
    """The whole ``config.yaml``."""

    currency: str = "USD"
    ledger: LedgerConfig = LedgerConfig()
    teams: dict[str, TeamConfig] = Field(default_factory=dict)
    dags: dict[str, DagConfig] = Field(default_factory=dict)
    attribution: AttributionConfig = AttributionConfig()
    budgets: tuple[BudgetConfig, ...] = ()
    anomaly: AnomalyConfig = AnomalyConfig()
    rate_cards: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    notifications: dict[str, list[NotificationRoute]] = Field(default_factory=dict)

    @field_validator("currency")
    @classmethod
    def _cur(cls, v: str) -> str:
        try:
            return check_currency(v)
        except MoneyError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _unique_budgets(self) -> FinOpsConfig:
        dup = {n for n, k in Counter(b.name for b in self.budgets).items() if k > 1}  # 10,000 budgets: linear
        if dup:
            raise ValueError(f"budget names must be unique; duplicated: {', '.join(sorted(dup))}")
        for k in self.rate_cards:
            if k != "overrides":
                raise ValueError(f"rate_cards.{k}: unknown key; use rate_cards.overrides: [...]")
        return self

    # ---------------------------------------------------------------- lookups
    def dag(self, dag_id: str | None) -> DagConfig | None:
        """The DAG mapping for ``dag_id`` (exact name first, then glob patterns in file order)."""
        if not dag_id:
            return None
        if dag_id in self.dags:
            return self.dags[dag_id]
        for pattern, cfg in self.dags.items():
            if any(ch in pattern for ch in "*?[") and fnmatch.fnmatchcase(dag_id, pattern):
                return cfg
        return None

    def team_cost_center(self, team: str | None) -> str | None:
        if team and team in self.teams:
            return self.teams[team].cost_center
        return None


def _fix_hint(err: Any) -> str:
    t = err.get("type", "")
    if t == "extra_forbidden":
        return "remove the key or check its spelling"
    if t == "missing":
        return "add this key"
    if t.startswith("literal_error"):
        return "use one of the allowed values"
    return "fix the value"


def parse_config(data: Any, *, where: str = "<config>") -> FinOpsConfig:
    """Validate a mapping as config; :class:`ConfigError` lists every problem with key path and fix."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of keys (budgets:, teams:, ...)")
    try:
        return FinOpsConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {key}: {msg} ({_fix_hint(err)})")
        raise ConfigError("\n".join(lines)) from None


def config_roots(config_file: str | Path) -> tuple[Path, ...]:
    """The folders a config file's paths may point into: ``$FINOPS_HOME`` and the config file's folder."""
    from finops_provider.core.ledger import finops_home

    return (Path(os.path.abspath(finops_home())), Path(os.path.abspath(Path(config_file).parent)))


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def confine_path(value: str, *, roots: Sequence[Path], base: Path, where: str, key: str) -> Path:
    """The absolute path ``value`` names, if it stays inside ``roots``; else :class:`ConfigError`.

    Refused: any ``..`` component, an absolute path (or ``~``) outside every root, and a path that is inside a
    root as written but leaves it through a symlink (checked on the fully resolved path). A relative path
    resolves against ``base``.
    """
    listing = " or ".join(str(r) for r in roots)
    fix = f"put the file inside {listing} ($FINOPS_HOME or the config file's folder), or give the path through "
    fix += "the environment instead (FINOPS_LEDGER_URL, FINOPS_HOME)"
    p = Path(os.path.expanduser(value))
    if ".." in p.parts:
        raise ConfigError(f"{where}: {key}: {value!r} contains '..' (write the path without '..', inside {listing})")
    if not p.is_absolute():
        p = base / p
    p = Path(os.path.normpath(p))
    try:
        real = p.resolve(strict=False)
        real_roots = [r.resolve(strict=False) for r in roots]
    except (ValueError, OSError, RuntimeError) as e:  # NUL byte, symlink loop
        raise ConfigError(f"{where}: {key}: {value!r} is not a usable file path ({e}); fix the value") from None
    if any(_inside(real, r) for r in real_roots):
        return p
    if any(_inside(p, r) for r in (*roots, *real_roots)):
        escape = f"leads through a symlink to {real}, outside the allowed folders"
        raise ConfigError(f"{where}: {key}: {value!r} {escape} ({fix})")
    raise ConfigError(f"{where}: {key}: {value!r} is outside the allowed folders ({fix})")


def _confine_ledger_url(cfg: FinOpsConfig, config_file: Path) -> FinOpsConfig:
    """``ledger.url``: a SQLite file must stay inside :func:`config_roots`; it comes back with an absolute path."""
    url = cfg.ledger.url
    if not url:
        return cfg
    import sqlalchemy as sa

    where = str(config_file)
    try:
        u = sa.engine.make_url(url)
    except Exception:  # the message of a parse error may quote the URL, password included
        raise ConfigError(
            f"{where}: ledger.url: not a database URL (use postgresql+psycopg://user:pass@host/db, "
            f"or sqlite:///ledger.db for a file in this folder)"
        ) from None
    if not u.drivername.startswith("sqlite") or u.database in (None, "", ":memory:"):
        return cfg
    if u.database.startswith("file:") or u.query.get("uri"):
        raise ConfigError(
            f"{where}: ledger.url: SQLite URI file names are not supported here (write sqlite:///<path of the file>)"
        )
    base = Path(os.path.abspath(config_file.parent))
    path = confine_path(u.database, roots=config_roots(config_file), base=base, where=where, key="ledger.url")
    fixed = u.set(database=str(path)).render_as_string(hide_password=False)
    return cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"url": fixed})})


def load_config(path: str | Path | None) -> FinOpsConfig:
    """Load ``config.yaml`` safely; ``None`` gives the defaults.

    File paths in it are confined to :func:`config_roots` (see the module docstring); relative ones come back
    absolute, resolved against the config file's folder.
    """
    if path is None:
        return FinOpsConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file; pass the path of your config.yaml (see README, Configuration)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}:{loc}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    return _confine_ledger_url(parse_config(data, where=str(p)), p)
