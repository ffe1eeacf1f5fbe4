"""Who owns a cost: job / task / team / cost-center, from tags, DAG mappings and team mappings.

Nothing is dropped: a cost nobody owns keeps empty attribution and is reported as the explicit
``(unallocated)`` row. Shared costs are split exactly (the parts add up to the whole to the last digit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import ROUND_DOWN, Decimal, localcontext

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.focus import BadRow
from finops_provider.core.money import MONEY_CONTEXT, Money
from finops_provider.core.records import CostRecord

_TAG_FIELDS = ("team", "cost_center", "dag_id", "task_id", "run_id", "job_id")


class Attributor:
    """Fills the ``x_`` attribution columns of records from their tags and the config mappings."""

    def __init__(self, config: FinOpsConfig | None = None) -> None:
        self.config = config or FinOpsConfig()
        a = self.config.attribution
        self._keys = {f: getattr(a, f) for f in _TAG_FIELDS}

    def apply(self, r: CostRecord) -> CostRecord:
        """Attribute one record in place (explicit values are never overwritten) and return it."""
        tags = r.tags
        if tags:
            for f, keys in self._keys.items():
                attr = f"x_{f}"
                if getattr(r, attr):
                    continue
                for k in keys:
                    v = tags.get(k)
                    if v:
                        setattr(r, attr, v)
                        break
        dag = self.config.dag(r.x_dag_id)
        if dag is not None:
            if not r.x_team and dag.team:
                r.x_team = dag.team
            if not r.x_cost_center and dag.cost_center:
                r.x_cost_center = dag.cost_center
            if not r.x_platform and dag.platform:
                r.x_platform = dag.platform
        if not r.x_cost_center:
            r.x_cost_center = self.config.team_cost_center(r.x_team)
        if not r.x_job_id and r.x_dag_id:
            r.x_job_id = r.x_dag_id
        return r

    def apply_all(self, items: Iterable[CostRecord | BadRow]) -> Iterator[CostRecord | BadRow]:
        for it in items:
            yield it if isinstance(it, BadRow) else self.apply(it)


def split_shared(
    total: Money, weights: Mapping[str, Decimal], *, quantum: Decimal = Decimal("1e-10")
) -> dict[str, Money]:
    """Split ``total`` across owners in proportion to ``weights``; the parts sum to ``total`` exactly.

    Each share is rounded down to ``quantum``; the remainder goes to the largest owner. Owners with zero
    weight get zero. With no positive weight the whole amount goes to ``(unallocated)``.
    """
    pos = {k: Decimal(w) for k, w in weights.items() if Decimal(w) > 0}
    if not pos:
        return {"(unallocated)": total}
    out: dict[str, Money] = {}
    with localcontext(MONEY_CONTEXT):  # the default 28 digits would round (or fail) above ~10^17
        wsum = sum(pos.values(), Decimal(0))
        acc = Decimal(0)
        for k, w in pos.items():
            share = (total.amount * w / wsum).quantize(quantum, rounding=ROUND_DOWN)
            out[k] = Money(share, total.currency)
            acc += share
        biggest = max(pos, key=lambda k: (pos[k], k))
        out[biggest] = Money(out[biggest].amount + (total.amount - acc), total.currency)
    for k in weights:
        out.setdefault(k, Money.zero(total.currency))
    return out
