"""Group costs by any keys, per currency, with exact conservation (Σ groups = Σ input).

Dimensions: platform, provider, service, service_category, dag, task, run, job, team, cost_center,
region, account, sub_account, sku, charge_category, cost_kind, source, asset, resource, day, month,
and ``tag:<key>`` for any tag. A missing owner is the explicit ``(unallocated)`` key, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

from finops_provider.core.money import MONEY_CONTEXT, Money, MoneyBag
from finops_provider.core.records import COST_BASES, UNALLOCATED, CostRecord

#: dimension -> (record attributes it reads, how to build the key from their values)
_DIMS: dict[str, tuple[tuple[str, ...], Callable[..., str]]] = {
    "platform": (("x_platform", "provider_name"), lambda p, prov: p or prov or UNALLOCATED),
    "provider": (("provider_name",), lambda v: v or UNALLOCATED),
    "service": (("service_name",), lambda v: v or UNALLOCATED),
    "service_category": (("service_category",), lambda v: v or UNALLOCATED),
    "dag": (("x_dag_id",), lambda v: v or UNALLOCATED),
    "task": (("x_dag_id", "x_task_id"), lambda d, t: f"{d}.{t}" if d and t else UNALLOCATED),
    "run": (("x_dag_id", "x_run_id"), lambda d, r: f"{d}/{r}" if d and r else UNALLOCATED),
    "job": (("x_job_id",), lambda v: v or UNALLOCATED),
    "team": (("x_team",), lambda v: v or UNALLOCATED),
    "cost_center": (("x_cost_center",), lambda v: v or UNALLOCATED),
    "region": (("region_id",), lambda v: v or UNALLOCATED),
    "account": (("billing_account_id",), lambda v: v or UNALLOCATED),
    "sub_account": (("sub_account_id",), lambda v: v or UNALLOCATED),
    "sku": (("sku_id",), lambda v: v or UNALLOCATED),
    "charge_category": (("charge_category",), lambda v: v or UNALLOCATED),
    "cost_kind": (("x_cost_kind",), lambda v: v or "billed"),
    "source": (("x_source",), lambda v: v or UNALLOCATED),
    "asset": (("x_asset",), lambda v: v or UNALLOCATED),
    "resource": (("resource_id",), lambda v: v or UNALLOCATED),
    "day": (("charge_period_start",), lambda t: t.strftime("%Y-%m-%d")),
    "month": (("charge_period_start",), lambda t: t.strftime("%Y-%m")),
}
DIMENSIONS = (*tuple(_DIMS), "tag:<key>")


def _resolve(dim: str) -> tuple[tuple[str, ...], Callable[..., str]]:
    if dim.startswith("tag:"):
        key = dim[4:]
        if not key:
            raise ValueError("tag dimension needs a key, for example tag:env")
        return ("tags",), lambda tags, _k=key: (tags or {}).get(_k) or UNALLOCATED
    try:
        return _DIMS[dim]
    except KeyError:
        raise ValueError(f"unknown dimension {dim!r}; use one of {', '.join(DIMENSIONS)}") from None


@dataclass(frozen=True)
class Group:
    keys: tuple[str, ...]
    currency: str
    amount: Decimal
    rows: int

    @property
    def money(self) -> Money:
        return Money(self.amount, self.currency)

    def to_json(self, by: Sequence[str]) -> dict[str, Any]:
        return {
            **dict(zip(by, self.keys, strict=True)),
            "currency": self.currency,
            "amount": str(self.amount),
            "rows": self.rows,
        }


class Aggregation:
    """The result of grouping: groups per (keys, currency), plus exact totals."""

    def __init__(self, by: Sequence[str], basis: str, groups: list[Group]) -> None:
        self.by = tuple(by)
        self.basis = basis
        self.groups = groups

    def total(self) -> MoneyBag:
        bag = MoneyBag()
        for g in self.groups:
            bag.add_raw(g.amount, g.currency)
        return bag

    def top(self, n: int, currency: str | None = None) -> list[Group]:
        gs = [g for g in self.groups if currency is None or g.currency == currency]
        return sorted(gs, key=lambda g: (-g.amount, g.keys))[:n]

    def as_dict(self) -> dict[tuple[tuple[str, ...], str], Decimal]:
        return {(g.keys, g.currency): g.amount for g in self.groups}

    def to_json(self) -> list[dict[str, Any]]:
        return [g.to_json(self.by) for g in self.groups]


def needed_columns(by: Sequence[str], basis: str) -> list[str]:
    cols: list[str] = [COST_BASES[basis], "billing_currency"]
    for d in by:
        for a in _resolve(d)[0]:
            if a not in cols:
                cols.append(a)
    return cols


def aggregate_rows(
    rows: Iterable[Sequence[Any]], columns: Sequence[str], by: Sequence[str], basis: str = "billed"
) -> Aggregation:
    """Group rows given as sequences whose positions are named by ``columns`` (see :func:`needed_columns`)."""
    idx = {c: i for i, c in enumerate(columns)}
    amt_i = idx[COST_BASES[basis]]
    cur_i = idx["billing_currency"]
    plans = []
    for d in by:
        attrs, fn = _resolve(d)
        plans.append((tuple(idx[a] for a in attrs), fn))
    sums: dict[tuple[tuple[str, ...], str], list[Any]] = {}
    with localcontext(MONEY_CONTEXT):
        for row in rows:
            keys = tuple(fn(*[row[i] for i in ix]) for ix, fn in plans)
            k = (keys, row[cur_i])
            a = row[amt_i]
            slot = sums.get(k)
            if slot is None:
                sums[k] = [a if a is not None else Decimal(0), 1]
            else:
                if a is not None:
                    slot[0] += a
                slot[1] += 1
    groups = [Group(k[0], k[1], v[0], v[1]) for k, v in sums.items()]
    groups.sort(key=lambda g: (g.keys, g.currency))
    return Aggregation(by, basis, groups)


def aggregate(records: Iterable[CostRecord], by: Sequence[str], basis: str = "billed") -> Aggregation:
    """Group in-memory records by ``by`` dimensions."""
    cols = needed_columns(by, basis)
    return aggregate_rows(([getattr(r, c) for c in cols] for r in records), cols, by, basis)


def aggregate_ledger(ledger: Any, by: Sequence[str], basis: str = "billed", **filters: Any) -> Aggregation:
    """Group the ledger's rows, streaming only the columns needed."""
    cols = needed_columns(by, basis)
    return aggregate_rows(ledger.rows(cols, **filters), cols, by, basis)
