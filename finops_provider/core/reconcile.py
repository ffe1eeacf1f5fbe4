"""Reconciliation: run-time estimates are superseded by billed truth, and the estimate error is kept.

A task run's estimate (``x_cost_kind="estimate"``) is written the moment the task finishes so budgets can act
now; the platform's billed truth (``x_cost_kind="billed"``) arrives hours later with the same attribution
(``x_dag_id``, ``x_task_id``, ``x_run_id``, ``x_platform``). :func:`reconcile` finds, in a window, every
estimate whose (dag_id, task_id, run_id, platform) now has truth and **supersedes** it:

* the estimate row leaves ``finops_cost_line`` (with a ``superseded`` audit entry), so every total, budget and
  aggregation counts truth where it exists and estimates only where no truth exists yet — no reader needs a
  special rule, and estimate + truth are never double counted;
* it is kept in ``finops_estimate_reconciliation`` with the task's estimate, truth and error %, so estimate
  accuracy per platform can be reported (:class:`ReconcileReport`).

Errors are computed per currency: an estimate in one currency is never compared with truth in another (its
``truth`` and ``error_pct`` stay empty). Reconciling again is idempotent; an estimate re-recorded after it was
superseded (a callback retried late) is superseded again by the next run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any

import sqlalchemy as sa

from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MONEY_CONTEXT, Money
from finops_provider.core.platforms import label_value
from finops_provider.core.schema import cost_line, cost_line_audit, estimate_reconciliation

log = logging.getLogger(__name__)

_PCT_QUANTUM = Decimal("0.000001")
TaskKey = tuple[str, str, str, str]  # dag_id, task_id, run_id, platform


@dataclass(frozen=True)
class TaskReconciliation:
    """One task run's estimate against its billed truth (one currency)."""

    dag_id: str
    task_id: str
    run_id: str
    platform: str
    estimate: Money
    truth: Money | None
    error_pct: Decimal | None
    estimate_rows: int
    truth_rows: int

    def to_json(self) -> dict[str, Any]:
        return {
            "dag_id": self.dag_id,
            "task_id": self.task_id,
            "run_id": self.run_id,
            "platform": self.platform,
            "currency": self.estimate.currency,
            "estimate": str(self.estimate.amount),
            "truth": None if self.truth is None else str(self.truth.amount),
            "error_pct": None if self.error_pct is None else str(self.error_pct),
        }


@dataclass(frozen=True)
class PlatformAccuracy:
    """How good one platform's estimates were, per currency.

    ``bias_pct`` is (Σ estimate − Σ truth) / Σ truth × 100 (positive: estimates run high);
    ``mean_abs_error_pct`` is the mean of |error %| over the reconciled task runs.
    """

    platform: str
    currency: str
    tasks: int
    estimate: Decimal
    truth: Decimal
    bias_pct: Decimal | None
    mean_abs_error_pct: Decimal | None

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in self.__dict__.items()}


@dataclass
class ReconcileReport:
    """What :func:`reconcile` did. ``pending`` estimates have no truth yet and stay active."""

    window: tuple[dt.datetime, dt.datetime]
    batch_id: str
    superseded_rows: int = 0
    pending_rows: int = 0
    tasks: list[TaskReconciliation] = field(default_factory=list)
    accuracy: dict[tuple[str, str], PlatformAccuracy] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """XCom-safe summary (money and percentages as exact strings)."""
        return {
            "window": [self.window[0].isoformat(), self.window[1].isoformat()],
            "batch_id": self.batch_id,
            "superseded_rows": self.superseded_rows,
            "pending_rows": self.pending_rows,
            "tasks": [t.to_json() for t in self.tasks],
            "accuracy": [a.to_json() for a in self.accuracy.values()],
        }


def error_pct(estimate: Decimal, truth: Decimal) -> Decimal | None:
    """(estimate − truth) / truth × 100 to 6 decimals; None when truth is zero."""
    if truth == 0:
        return None
    with localcontext(MONEY_CONTEXT):
        return ((estimate - truth) / truth * 100).quantize(_PCT_QUANTUM)


def _row_json(m: Any) -> str:
    out = {}
    for k, v in m.items():
        if isinstance(v, dt.datetime):
            out[k] = v.isoformat()
        elif isinstance(v, Decimal):
            out[k] = str(v)
        else:
            out[k] = v
    return json.dumps(out, sort_keys=True, default=str)


def _key(dag_id: str | None, task_id: str | None, run_id: str | None, platform: str | None) -> TaskKey:
    """Match ids in their label-safe form: BigQuery labels and Kubernetes labels cannot carry ``:`` ``+`` or
    capitals, so truth may hold ``scheduled__2026-03-01t00_00_00_00_00`` for the estimate's run id."""
    return (label_value(dag_id or ""), label_value(task_id or ""), label_value(run_id or ""), platform or "")


def reconcile(ledger: Ledger, start: dt.datetime, end: dt.datetime) -> ReconcileReport:
    """Supersede the estimates of ``[start, end)`` that now have billed truth; record their errors.

    Matching is on (dag_id, task_id, run_id, platform), ids compared in their label-safe form
    (:func:`~finops_provider.core.platforms.label_value`), over rows whose charge period starts in the window;
    truth of a task run is the sum of its billed rows there (in the estimate's currency).

    :return: a :class:`ReconcileReport` with per-task errors and per-platform accuracy.
    """
    window = (start, end)
    report = ReconcileReport(window=window, batch_id=uuid.uuid4().hex)
    in_window = (cost_line.c.charge_period_start >= start, cost_line.c.charge_period_start < end)
    keyed = (cost_line.c.x_dag_id.is_not(None), cost_line.c.x_task_id.is_not(None), cost_line.c.x_run_id.is_not(None))
    now = dt.datetime.now(dt.UTC)
    with ledger.engine.begin() as conn:
        estimates = list(
            conn.execute(sa.select(cost_line).where(cost_line.c.x_cost_kind == "estimate", *in_window)).mappings()
        )
        if not estimates:
            return report
        truth: dict[tuple[TaskKey, str], Decimal] = defaultdict(Decimal)
        truth_rows: dict[tuple[TaskKey, str], int] = defaultdict(int)
        truth_keys: set[TaskKey] = set()
        q = sa.select(
            cost_line.c.x_dag_id,
            cost_line.c.x_task_id,
            cost_line.c.x_run_id,
            cost_line.c.x_platform,
            cost_line.c.billing_currency,
            cost_line.c.billed_cost,
        ).where(cost_line.c.x_cost_kind == "billed", *in_window, *keyed)
        with localcontext(MONEY_CONTEXT):
            for d, t, r, p, cur, amount in conn.execute(q):
                k: TaskKey = _key(d, t, r, p)
                truth[(k, cur)] += amount
                truth_rows[(k, cur)] += 1
                truth_keys.add(k)
        by_task: dict[tuple[TaskKey, str], list[Any]] = defaultdict(list)
        for e in estimates:
            k = _key(e["x_dag_id"], e["x_task_id"], e["x_run_id"], e["x_platform"])
            if k in truth_keys:
                by_task[(k, e["billing_currency"])].append(e)
            else:
                report.pending_rows += 1
        rec_rows: list[dict[str, Any]] = []
        for (k, cur), rows in by_task.items():
            with localcontext(MONEY_CONTEXT):
                est = sum((r["billed_cost"] for r in rows), Decimal(0))
            tr = truth.get((k, cur))
            ids = (rows[0]["x_dag_id"] or "", rows[0]["x_task_id"] or "", rows[0]["x_run_id"] or "")  # as estimated
            err = error_pct(est, tr) if tr is not None else None
            report.tasks.append(
                TaskReconciliation(
                    dag_id=ids[0],
                    task_id=ids[1],
                    run_id=ids[2],
                    platform=k[3],
                    estimate=Money(est, cur),
                    truth=None if tr is None else Money(tr, cur),
                    error_pct=err,
                    estimate_rows=len(rows),
                    truth_rows=truth_rows.get((k, cur), 0),
                )
            )
            for r in rows:
                rec_rows.append(
                    {
                        "natural_key": r["natural_key"],
                        "line_item_id": r["x_line_item_id"],
                        "platform": k[3],
                        "dag_id": ids[0],
                        "task_id": ids[1],
                        "run_id": ids[2],
                        "charge_period_start": r["charge_period_start"],
                        "billing_currency": cur,
                        "estimate": r["billed_cost"],
                        "task_estimate": est,
                        "truth": tr,
                        "error_pct": err,
                        "truth_rows": truth_rows.get((k, cur), 0),
                        "record": _row_json(r),
                        "batch_id": report.batch_id,
                        "reconciled_at": now,
                    }
                )
        keys = [r["natural_key"] for r in rec_rows]
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            conn.execute(estimate_reconciliation.delete().where(estimate_reconciliation.c.natural_key.in_(part)))
            conn.execute(cost_line.delete().where(cost_line.c.natural_key.in_(part)))
        if rec_rows:
            conn.execute(estimate_reconciliation.insert(), rec_rows)
            conn.execute(
                cost_line_audit.insert(),
                [
                    {
                        "natural_key": r["natural_key"],
                        "action": "superseded",
                        "batch_id": report.batch_id,
                        "at": now,
                        "billing_currency": r["billing_currency"],
                        "old_billed_cost": r["estimate"],
                        "new_billed_cost": None,
                        "old_effective_cost": None,
                        "new_effective_cost": None,
                        "old_content_hash": None,
                        "new_content_hash": None,
                    }
                    for r in rec_rows
                ],
            )
        report.superseded_rows = len(rec_rows)
    report.accuracy = accuracy(report.tasks)
    log.info(
        "reconciled %s..%s: %d estimate rows superseded by truth, %d pending",
        start.isoformat(),
        end.isoformat(),
        report.superseded_rows,
        report.pending_rows,
    )
    return report


def accuracy(tasks: list[TaskReconciliation]) -> dict[tuple[str, str], PlatformAccuracy]:
    """Per (platform, currency) estimate accuracy over reconciled task runs that have same-currency truth."""
    groups: dict[tuple[str, str], list[TaskReconciliation]] = defaultdict(list)
    for t in tasks:
        if t.truth is not None:
            groups[(t.platform, t.estimate.currency)].append(t)
    out: dict[tuple[str, str], PlatformAccuracy] = {}
    with localcontext(MONEY_CONTEXT):
        for (platform, cur), ts in sorted(groups.items()):
            est = sum((t.estimate.amount for t in ts), Decimal(0))
            tru = sum((t.truth.amount for t in ts if t.truth is not None), Decimal(0))
            errs = [abs(t.error_pct) for t in ts if t.error_pct is not None]
            out[(platform, cur)] = PlatformAccuracy(
                platform=platform,
                currency=cur,
                tasks=len(ts),
                estimate=est,
                truth=tru,
                bias_pct=error_pct(est, tru),
                mean_abs_error_pct=(sum(errs, Decimal(0)) / len(errs)).quantize(_PCT_QUANTUM) if errs else None,
            )
    return out


def estimate_errors(ledger: Ledger, *, platform: str | None = None) -> list[dict[str, Any]]:
    """The kept superseded estimates (one row per estimate row), newest first."""
    q = sa.select(estimate_reconciliation).order_by(estimate_reconciliation.c.id.desc())
    if platform:
        q = q.where(estimate_reconciliation.c.platform == platform)
    with ledger.engine.connect() as conn:
        return [dict(m) for m in conn.execute(q).mappings()]
