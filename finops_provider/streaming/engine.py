"""The streaming engine: running budget totals, breaches and anomalies per event, with bounded state.

Pure Python, no I/O, no Airflow. One budget engine, two feeds: breaches come from
:func:`finops_provider.core.budgets.evaluate` — the batch engine's own function — so a breach found
here is the same :class:`~finops_provider.core.budgets.Breach` (same ``dedupe_key``) the batch engine
would produce, and :meth:`Ledger.claim_breach` makes its actions happen once whichever feed sees it first.

Hot path (:meth:`StreamEngine.apply`): per event, one lookup per budget-scope dimension in an index built
from the budgets' scopes, one exact ``Decimal`` add per matching budget, one per anomaly scope. Thresholds
are checked per micro-batch (:meth:`StreamEngine.evaluate`) for the scopes touched since the last check,
with an exact pre-filter (``total >= next limit``; ``total × period >= limit × elapsed`` for forecasts) so
:func:`evaluate` runs only when a threshold may have been crossed.

Time is event time. The engine clock is the latest event time seen; the watermark is the clock minus
``allowed_lateness``. An event older than the watermark is *late*: :meth:`apply` does not count it (it still
goes to the ledger, where the next batch evaluation picks it up — never dropped). A budget period whose end
is at or before the watermark is final and evicted from memory; an anomaly scope idle for ``anomaly_idle_ttl``
is evicted too. State per scope (measured by ``bench/streaming.py``) is a few hundred bytes.

Anomalies: per scope (team, DAG, platform by default) and currency, cost is summed into event-time buckets
(1 hour by default); the expected value is an EWMA of past buckets (empty buckets count as zero). The
current, still-filling bucket is anomalous when it is above ``threshold_pct`` % of the EWMA *and* at least
``min_impact`` above it (the batch detector's two gates), after ``anomaly_warmup`` buckets and outside a
cooldown of ``anomaly_cooldown`` buckets after the last anomaly of that scope. The root cause is the child
dimension value (task of a DAG, DAG of a team, service of a platform) with the largest excess over its own EWMA.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from finops_provider.core.anomaly import ROOT_CAUSE_CHILD, Anomaly
from finops_provider.core.budgets import Breach, evaluate, period_bounds
from finops_provider.core.config import BudgetConfig, FinOpsConfig
from finops_provider.core.money import MONEY_CONTEXT, Money
from finops_provider.core.records import COST_BASES, UNALLOCATED, CostRecord

#: budget scope key / anomaly dimension -> CostRecord attribute
DIM_ATTR = {
    "dag": "x_dag_id",
    "task": "x_task_id",
    "job": "x_job_id",
    "team": "x_team",
    "cost_center": "x_cost_center",
    "platform": "x_platform",
    "service": "service_name",
    "resource": "resource_id",
}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ZERO = Decimal(0)
_Q = Decimal("1e-12")  # EWMA precision (state stays small; money totals are never rounded)


@dataclass(frozen=True)
class StreamSettings:
    """Engine tuning; defaults are documented in the README's streaming section."""

    allowed_lateness: dt.timedelta = dt.timedelta(hours=1)
    run_ttl: dt.timedelta = dt.timedelta(days=1)
    anomaly_dims: tuple[str, ...] = ("team", "dag", "platform")
    anomaly_bucket: dt.timedelta = dt.timedelta(hours=1)
    anomaly_alpha: Decimal = Decimal("0.3")
    anomaly_warmup: int = 6
    anomaly_cooldown: int = 3
    anomaly_threshold_pct: Decimal = Decimal(150)
    anomaly_min_impact: Decimal = Decimal(1)
    anomaly_idle_ttl: dt.timedelta = dt.timedelta(days=7)
    anomaly_max_children: int = 32
    anomaly_max_gap: int = 48  # empty buckets folded as zeros at most (then the EWMA is effectively zero)

    @classmethod
    def from_config(cls, config: FinOpsConfig, **overrides: Any) -> StreamSettings:
        kw: dict[str, Any] = {
            "anomaly_threshold_pct": config.anomaly.threshold_pct,
            "anomaly_min_impact": config.anomaly.min_impact,
        }
        kw.update(overrides)
        return cls(**kw)


@dataclass
class _Budget:
    cfg: BudgetConfig
    attr: str
    checks: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    actual_limits: tuple[tuple[Decimal, Decimal], ...]  # (limit, pct), basis actual
    forecast_limits: tuple[tuple[Decimal, Decimal], ...]  # basis forecasted
    only_primary: bool = False  # the scope is one key (the index key): no further check needed
    is_run: bool = False
    currency: str = "USD"
    current: BudgetState | None = None  # the state of the latest calendar period seen (hot-path cache)

    def matches(self, r: CostRecord) -> bool:
        for attr, val in self.checks:
            v = (r.x_platform or r.provider_name) if attr == "x_platform" else getattr(r, attr)
            if v != val:
                return False
        if self.tags:
            t = r.tags
            for k, val in self.tags:
                if t.get(k) != val:
                    return False
        return True


class BudgetState:
    """Running total of one budget in one period (or run)."""

    __slots__ = (
        "asof",
        "b",
        "fired",
        "last_event",
        "next_actual",
        "next_forecast",
        "others",
        "period_end",
        "period_start",
        "run_id",
        "saved_as",
        "total",
    )

    def __init__(self, b: _Budget, period_start: dt.datetime, period_end: dt.datetime, run_id: str | None) -> None:
        self.b = b
        self.period_start = period_start
        self.period_end = period_end
        self.run_id = run_id
        self.total = _ZERO
        self.others: dict[str, Decimal] | None = None
        self.last_event = period_start
        self.fired: set[tuple[str, Decimal]] = set()
        self.asof = 0  # the seq of the last event in this state when it was saved (replay skips older events)
        self.saved_as: tuple[str, str, str] | None = None  # (key, period start, period end) text, once saved
        self._limits()

    def _limits(self) -> None:
        a = [lim for lim, p in self.b.actual_limits if ("actual", p) not in self.fired]
        f = [lim for lim, p in self.b.forecast_limits if ("forecasted", p) not in self.fired]
        self.next_actual = min(a) if a else None
        self.next_forecast = min(f) if f else None

    @property
    def key(self) -> str:
        p = f"run:{self.run_id}" if self.run_id is not None else self.period_start.isoformat()
        return f"budget|{self.b.cfg.name}|{p}"

    def may_breach(self, now: dt.datetime) -> bool:
        """Exact pre-filter: could a not-yet-fired threshold be crossed now?"""
        if self.next_actual is not None and self.total >= self.next_actual:
            return True
        if self.next_forecast is None:
            return False
        if self.run_id is not None or now >= self.period_end:
            return self.total >= self.next_forecast
        elapsed = (now - self.period_start).total_seconds()
        if elapsed <= 0:
            return self.total >= self.next_forecast
        span = Decimal(str((self.period_end - self.period_start).total_seconds()))
        with localcontext(MONEY_CONTEXT):
            return self.total * span >= self.next_forecast * Decimal(str(elapsed))

    def to_json(self) -> dict[str, Any]:
        cfg = self.b.cfg
        return {
            "budget": cfg.name,
            "scope": cfg.scope,
            "period": cfg.period,
            "period_start": self.period_start.isoformat(),
            "period_end": self.period_end.isoformat(),
            "run_id": self.run_id,
            "amount": {"amount": str(cfg.amount), "currency": cfg.currency},
            "total": {"amount": str(self.total), "currency": cfg.currency},
            "other_currencies": {k: str(v) for k, v in (self.others or {}).items()},
            "last_event": self.last_event.isoformat(),
            "utilisation_pct": str(_pct(self.total, cfg.amount)),
        }


class AnomalyState:
    """EWMA baseline and the current bucket of one anomaly scope (dimension, value, currency)."""

    __slots__ = (
        "asof",
        "bucket",
        "child_means",
        "children",
        "cur",
        "currency",
        "dim",
        "last_fired",
        "mean",
        "n",
        "quiet_until",
        "value",
    )

    def __init__(self, dim: str, value: str, currency: str, bucket: int) -> None:
        self.dim = dim
        self.value = value
        self.currency = currency
        self.bucket = bucket
        self.cur = _ZERO
        self.children: dict[str, Decimal] = {}
        self.mean: Decimal | None = None
        self.child_means: dict[str, Decimal] = {}
        self.n = 0
        self.quiet_until = -1
        self.last_fired = -1
        self.asof = 0

    @property
    def key(self) -> str:
        return f"anomaly|{self.dim}|{self.value}|{self.currency}"

    def roll(self, bucket: int, alpha: Decimal, max_gap: int, max_children: int) -> None:
        """Close the current bucket (and ``bucket - self.bucket - 1`` empty ones) into the EWMA."""
        zeros = min(bucket - self.bucket - 1, max_gap)
        with localcontext(MONEY_CONTEXT):
            decay = (1 - alpha) ** zeros if zeros > 0 else None
            cur = self.cur
            m = cur if self.mean is None else self.mean + alpha * (cur - self.mean)
            self.mean = (m if decay is None else m * decay).quantize(_Q)
            old_means, children = self.child_means, self.children
            cm: dict[str, Decimal] = {}
            for c, old in old_means.items():
                x = children.get(c, _ZERO)
                v = old + alpha * (x - old)
                v = (v if decay is None else v * decay).quantize(_Q)
                if v:
                    cm[c] = v
            for c, x in children.items():
                if c not in old_means and x:
                    cm[c] = x if decay is None else (x * decay).quantize(_Q)
            if len(cm) > max_children:
                cm = dict(sorted(cm.items(), key=lambda kv: -abs(kv[1]))[:max_children])
            self.child_means = cm
        self.n += 1 + max(zeros, 0)
        self.bucket = bucket
        self.cur = _ZERO
        self.children = {}


def _pct(value: Decimal, of: Decimal) -> Decimal:
    if of == 0:
        return _ZERO
    with localcontext(MONEY_CONTEXT):
        return (value * 100 / of).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def _compile(cfg: BudgetConfig) -> _Budget:
    checks: list[tuple[str, str]] = []
    tags: list[tuple[str, str]] = []
    for k, v in cfg.scope.items():
        if k == "tag":
            tags.extend((str(tk), str(tv)) for tk, tv in v.items())
        elif k != "all":
            checks.append((DIM_ATTR[k], str(v)))
    with localcontext(MONEY_CONTEXT):
        actual = tuple((cfg.amount * t.pct / 100, t.pct) for t in cfg.thresholds if t.basis == "actual")
        forecast = tuple((cfg.amount * t.pct / 100, t.pct) for t in cfg.thresholds if t.basis == "forecasted")
    return _Budget(
        cfg,
        COST_BASES[cfg.cost_basis],
        tuple(checks),
        tuple(tags),
        actual,
        forecast,
        only_primary=len(checks) == 1 and not tags,
        is_run=cfg.period == "run",
        currency=cfg.currency,
    )


@dataclass
class EngineStats:
    applied: int = 0
    late: int = 0
    breaches: int = 0
    anomalies: int = 0
    evicted: int = 0


class StreamEngine:
    """Running totals, breaches and anomalies over a stream of cost records (see the module docstring).

    :param budgets: the budgets to track (calendar periods day/week/month, and per-run budgets).
    :param settings: lateness, anomaly detector and eviction settings.
    """

    def __init__(self, budgets: Sequence[BudgetConfig], settings: StreamSettings | None = None) -> None:
        self.settings = s = settings or StreamSettings()
        self.budgets = [_compile(b) for b in budgets]
        self._by_name = {b.cfg.name: b for b in self.budgets}
        # index: dimension -> value -> budgets whose first scope key is that (dimension, value)
        index: dict[str, dict[str, list[_Budget]]] = {}
        self._tag_index: dict[tuple[str, str], list[_Budget]] = {}
        self._always: list[_Budget] = []
        for b in self.budgets:
            if b.checks:
                attr, val = b.checks[0]
                index.setdefault(attr, {}).setdefault(val, []).append(b)
            elif b.tags:
                self._tag_index.setdefault(b.tags[0], []).append(b)
            else:
                self._always.append(b)
        self._index = [(attr, table, attr == "x_platform") for attr, table in index.items()]
        self._budget_states: dict[tuple[str, Any], BudgetState] = {}
        self._anomaly_states: dict[tuple[str, str, str], AnomalyState] = {}
        self._bsecs = int(s.anomaly_bucket.total_seconds())
        self._bounds: dict[str, tuple[dt.datetime, dt.datetime]] = {}
        self._eval_dirty: set[BudgetState] = set()
        self._eval_dirty_a: set[AnomalyState] = set()
        # state -> the seq recorded before the first unsaved event in it (insertion order = oldest first)
        self._persist_dirty: dict[BudgetState | AnomalyState, int] = {}
        self._recheck: set[BudgetState] = set()  # loaded states: evaluated once, not rewritten
        self.batch_seq = 0  # set by the runner: the seq recorded just before the events it applies next
        self._adim_states: dict[str, dict[str, AnomalyState]] = {d: {} for d in s.anomaly_dims}
        self._bucket: tuple[dt.datetime, dt.datetime, int] | None = None
        self._adims = tuple(
            (d, DIM_ATTR[d], DIM_ATTR[ROOT_CAUSE_CHILD.get(d, "service")], d == "platform", self._adim_states[d])
            for d in s.anomaly_dims
        )
        self.clock: dt.datetime | None = None  # the latest event time seen (forecasts are made "now" = clock)
        self.watermark: dt.datetime | None = None
        self._pclock: dict[str, dt.datetime] = {}  # latest event time per source partition
        self._active: set[str] | None = None
        self._next_evict: dt.datetime | None = None
        self.stats = EngineStats()

    @classmethod
    def from_config(cls, config: FinOpsConfig, **settings: Any) -> StreamEngine:
        return cls(config.budgets, StreamSettings.from_config(config, **settings))

    # --------------------------------------------------------------- hot path
    def apply(
        self,
        records: Iterable[CostRecord],
        partition: str = "",
        late: Sequence[bool] | None = None,
        seqs: Sequence[int] | None = None,
    ) -> list[bool]:
        """Count records of one source partition; returns, per record, True when it was late (not counted).

        The watermark is the minimum over the active partitions of their latest event time, minus the allowed
        lateness (so a backlog replayed partition by partition is not late), and it only moves forward; it is
        updated after each call. Events older than it are late.

        :param late: replaying after a crash: the lateness decided when these events were first applied.
        :param seqs: replaying after a crash: each event's recorded seq; a state saved after it (``asof``) already
            holds the event and is skipped.
        """
        out: list[bool] = []
        append = out.append
        stats = self.stats
        wm = self.watermark
        pmax = self._pclock.get(partition)
        adims = self._adims
        eval_add = self._eval_dirty_a.add
        with localcontext(MONEY_CONTEXT):
            for i, r in enumerate(records):
                t = r.charge_period_start
                if late[i] if late is not None else (wm is not None and t < wm):
                    stats.late += 1
                    append(True)
                    continue
                if pmax is None or t > pmax:
                    pmax = t
                skip = seqs[i] if seqs is not None else None
                self._apply_budgets(r, t, skip)
                if adims:
                    self._apply_anomalies(r, t, adims, eval_add, skip)
                append(False)
        stats.applied += len(out) - sum(out)
        if pmax is not None:
            self._pclock[partition] = pmax
            if self.clock is None or pmax > self.clock:
                self.clock = pmax
            self._advance_watermark()
        return out

    def set_active_partitions(self, partitions: Iterable[str] | None) -> None:
        """Partitions that hold the watermark back (``None``: all seen); idle ones are left out by the runner."""
        self._active = set(partitions) if partitions is not None else None
        self._advance_watermark()

    def _advance_watermark(self) -> None:
        if self._active is not None and any(p not in self._pclock for p in self._active):
            return  # an active partition has not delivered yet: its events could be older than anything seen
        clocks = [c for p, c in self._pclock.items() if self._active is None or p in self._active]
        if not clocks:
            return
        wm = min(clocks) - self.settings.allowed_lateness
        if self.watermark is None or wm > self.watermark:
            self.watermark = wm

    def _apply_budgets(self, r: CostRecord, t: dt.datetime, seq: int | None) -> None:
        for attr, table, is_platform in self._index:
            v = (r.x_platform or r.provider_name) if is_platform else getattr(r, attr)
            if v is not None:
                lst = table.get(v)
                if lst is not None:
                    for b in lst:
                        if b.only_primary or b.matches(r):
                            self._add(b, r, t, seq)
        if self._tag_index and r.tags:
            for kv in r.tags.items():
                lst = self._tag_index.get(kv)
                if lst is not None:
                    for b in lst:
                        if b.matches(r):
                            self._add(b, r, t, seq)
        for b in self._always:
            self._add(b, r, t, seq)

    def _add(self, b: _Budget, r: CostRecord, t: dt.datetime, seq: int | None) -> None:
        amount = getattr(r, b.attr)
        if amount is None:
            return
        cfg = b.cfg
        if b.is_run:
            rid = r.x_run_id
            if not rid:
                return
            key: tuple[str, Any] = (cfg.name, rid)
            st = self._budget_states.get(key)
            if st is None:
                st = self._budget_states[key] = BudgetState(b, t, t, rid)
        else:
            st = b.current
            if st is None or not st.period_start <= t < st.period_end:
                period = cfg.period
                bounds = self._bounds.get(period)
                if bounds is None or not bounds[0] <= t < bounds[1]:
                    bounds = self._bounds[period] = period_bounds(period, t)
                key = (cfg.name, bounds[0])
                st = self._budget_states.get(key)
                if st is None:
                    st = self._budget_states[key] = BudgetState(b, bounds[0], bounds[1], None)
                    self._note_end(bounds[1])
                if b.current is None or st.period_start >= b.current.period_start:
                    b.current = st
        if seq is not None and st.asof >= seq:
            return  # replay: the saved state already holds this event
        if r.billing_currency == b.currency:
            st.total += amount
        else:  # never summed with the budget currency; reported beside it
            others = st.others
            if others is None:
                others = st.others = {}
            others[r.billing_currency] = others.get(r.billing_currency, _ZERO) + amount
        if t > st.last_event:
            st.last_event = t
        self._eval_dirty.add(st)

    def _apply_anomalies(self, r: CostRecord, t: dt.datetime, adims: Any, eval_add: Any, seq: int | None) -> None:
        bk = self._bucket
        if bk is not None and bk[0] <= t < bk[1]:
            bucket = bk[2]
        else:
            bucket = int((t - _EPOCH).total_seconds()) // self._bsecs
            lo = _EPOCH + dt.timedelta(seconds=bucket * self._bsecs)
            self._bucket = (lo, lo + self.settings.anomaly_bucket, bucket)
        amount = r.billed_cost
        cur = r.billing_currency
        s = self.settings
        for dim, attr, child_attr, is_platform, by_value in adims:
            v = (r.x_platform or r.provider_name) if is_platform else getattr(r, attr)
            if not v:
                continue
            st = by_value.get(v)  # the scope's first currency; others are looked up by (dim, value, currency)
            if st is None or st.currency != cur:
                key = (dim, v, cur)
                st = self._anomaly_states.get(key)
                if st is None:
                    st = self._anomaly_states[key] = AnomalyState(dim, v, cur, bucket)
                    by_value.setdefault(v, st)
            if seq is not None and st.asof >= seq:
                continue  # replay: the saved state already holds this event
            if bucket > st.bucket:
                st.roll(bucket, s.anomaly_alpha, s.anomaly_max_gap, s.anomaly_max_children)
            elif bucket < st.bucket:
                continue  # an earlier, closed bucket: counted in budgets and the ledger, not in the live window
            st.cur += amount
            c = getattr(r, child_attr) or UNALLOCATED
            ch = st.children
            ch[c] = ch.get(c, _ZERO) + amount
            eval_add(st)

    def _note_end(self, end: dt.datetime) -> None:
        if self._next_evict is None or end < self._next_evict:
            self._next_evict = end

    # ------------------------------------------------------------- per batch
    def evaluate(self) -> tuple[list[Breach], list[Anomaly]]:
        """New breaches and anomalies of the scopes touched since the last call; then evict final state."""
        breaches: list[Breach] = []
        now = self.clock
        if now is not None:
            for st in self._eval_dirty:
                if st.may_breach(now):
                    breaches.extend(self._breaches(st, now))
            for st in self._recheck - self._eval_dirty:
                if st.may_breach(now):
                    breaches.extend(self._breaches(st, now))
        self._recheck = set()
        anomalies = [a for st in self._eval_dirty_a if (a := self._anomaly(st)) is not None]
        pd, bs = self._persist_dirty, self.batch_seq
        for st in self._eval_dirty:
            pd.setdefault(st, bs)
        for sta in self._eval_dirty_a:
            pd.setdefault(sta, bs)
        self._eval_dirty = set()
        self._eval_dirty_a = set()
        self.stats.breaches += len(breaches)
        self.stats.anomalies += len(anomalies)
        self._evict()
        return breaches, anomalies

    def _breaches(self, st: BudgetState, now: dt.datetime) -> list[Breach]:
        cfg = st.b.cfg
        actual = Money(st.total, cfg.currency)
        if st.run_id is not None:
            status = evaluate(cfg, actual, period_start=st.period_start, period_end=now, now=now, run_id=st.run_id)
        else:
            status = evaluate(cfg, actual, period_start=st.period_start, period_end=st.period_end, now=now)
        fresh = [b for b in status.breaches if (b.basis, b.threshold_pct) not in st.fired]
        if fresh:
            st.fired.update((b.basis, b.threshold_pct) for b in fresh)
            st._limits()
        return fresh

    def _anomaly(self, st: AnomalyState) -> Anomaly | None:
        s = self.settings
        if st.n < s.anomaly_warmup or st.bucket < st.quiet_until or st.last_fired == st.bucket or st.mean is None:
            return None
        cur, expected = st.cur, st.mean
        with localcontext(MONEY_CONTEXT):
            if not (cur * 100 > expected * s.anomaly_threshold_pct and cur - expected >= s.anomaly_min_impact):
                return None
            if expected > 0:
                score = (cur * 100 / expected).quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
            else:
                score = Decimal(999999)
            best: tuple[Decimal, str] | None = None
            for c, x in st.children.items():
                d = x - st.child_means.get(c, _ZERO)
                if best is None or d > best[0]:
                    best = (d, c)
        st.last_fired = st.bucket
        st.quiet_until = st.bucket + s.anomaly_cooldown + 1
        self._persist_dirty.setdefault(st, self.batch_seq)
        start = _EPOCH + dt.timedelta(seconds=st.bucket * self._bsecs)
        child = ROOT_CAUSE_CHILD.get(st.dim, "service")
        return Anomaly(
            scope=((st.dim, st.value),),
            window_start=start,
            window_end=start + s.anomaly_bucket,
            expected=Money(expected, st.currency),
            actual=Money(cur, st.currency),
            score=score,
            detector="stream_ewma",
            root_cause=(child, best[1], Money(best[0], st.currency)) if best is not None and best[0] > 0 else None,
        )

    def _evict(self) -> None:
        wm = self.watermark
        if wm is None or self._next_evict is None or wm < self._next_evict:
            return
        s = self.settings
        nxt: dt.datetime | None = None
        for key, st in list(self._budget_states.items()):
            end = st.last_event + s.run_ttl if st.run_id is not None else st.period_end
            if end <= wm:
                del self._budget_states[key]
                self._eval_dirty.discard(st)
                self._recheck.discard(st)
                if st.b.current is st:
                    st.b.current = None
                self.stats.evicted += 1
            elif nxt is None or end < nxt:
                nxt = end
        for akey, ast in list(self._anomaly_states.items()):
            if self._anomaly_end(ast) <= wm:
                del self._anomaly_states[akey]
                by_value = self._adim_states.get(ast.dim, {})
                if by_value.get(ast.value) is ast:
                    del by_value[ast.value]
                self.stats.evicted += 1
        check_again = wm + s.anomaly_idle_ttl / 4
        self._next_evict = min(nxt, check_again) if nxt is not None else check_again

    def _anomaly_end(self, st: AnomalyState) -> dt.datetime:
        return _EPOCH + dt.timedelta(seconds=(st.bucket + 1) * self._bsecs) + self.settings.anomaly_idle_ttl

    # ----------------------------------------------------------- persistence
    def dirty_count(self) -> int:
        """States changed since they were last saved."""
        return len(self._persist_dirty)

    def dirty_state(
        self, limit: int | None = None, *, asof: int = 0
    ) -> list[tuple[str, str, dt.datetime | None, dict[str, Any]]]:
        """(state key, kind, period end, JSON payload) of states changed since they were saved, and the clock.

        Incremental: at most ``limit`` states, those unsaved the longest first, so a snapshot never stalls the
        stream; each is stamped ``asof`` (the seq of the last event applied). The clock row carries ``seq`` and
        ``replay_from``: every change of an event with seq <= ``replay_from`` is in a saved state, so after a
        crash the events after it are applied again, each only to the states saved before it.
        Call after :meth:`evaluate` (which marks the states of the batch).
        """
        out: list[tuple[str, str, dt.datetime | None, dict[str, Any]]] = []
        pd = self._persist_dirty
        n = len(pd) if limit is None else min(limit, len(pd))
        take = list(itertools.islice(pd, n))
        for st in take:
            del pd[st]
            st.asof = asof
            if isinstance(st, BudgetState):
                end = st.last_event + self.settings.run_ttl if st.run_id is not None else st.period_end
                saved = st.saved_as
                if saved is None:  # the parts that never change, formatted once
                    saved = st.saved_as = (st.key, st.period_start.isoformat(), st.period_end.isoformat())
                key = saved[0]
                payload: dict[str, Any] = {
                    "budget": st.b.cfg.name,
                    "period_start": saved[1],
                    "period_end": saved[2],
                    "run_id": st.run_id,
                    "total": str(st.total),
                    "currency": st.b.cfg.currency,
                    "others": {k: str(v) for k, v in st.others.items()} if st.others else {},
                    "last_event": st.last_event.isoformat(),
                    "asof": asof,
                }
                out.append((key, "budget", end, payload))
            else:
                key = st.key
                payload = {
                    "dim": st.dim,
                    "value": st.value,
                    "currency": st.currency,
                    "bucket": st.bucket,
                    "cur": str(st.cur),
                    "children": {k: str(v) for k, v in st.children.items()} if st.children else {},
                    "mean": None if st.mean is None else str(st.mean),
                    "child_means": {k: str(v) for k, v in st.child_means.items()} if st.child_means else {},
                    "n": st.n,
                    "quiet_until": st.quiet_until,
                    "last_fired": st.last_fired,
                    "asof": asof,
                }
                out.append((key, "anomaly", self._anomaly_end(st), payload))
        if self.clock is not None:
            clock = {
                "clock": self.clock.isoformat(),
                "watermark": self.watermark.isoformat() if self.watermark is not None else None,
                "partitions": {p: c.isoformat() for p, c in self._pclock.items()},
                "seq": asof,
                "replay_from": min(next(iter(pd.values())), asof) if pd else asof,
            }
            out.append(("clock", "clock", None, clock))
        return out

    def load(self, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Restore state saved by :meth:`dirty_state` (kind, payload). Budgets no longer configured are skipped.

        Every restored budget is re-checked at the next :meth:`evaluate`: breaches crossed before a crash are
        produced again and the ledger's breach claim keeps their actions to one. A state saved before states
        carried ``asof`` (a full snapshot) is as of the clock row's ``seq``.
        """
        legacy_asof = 0
        for kind, p in rows:
            if kind == "clock":
                legacy_asof = int(p.get("seq", 0))
                self.clock = dt.datetime.fromisoformat(p["clock"])
                wm = p.get("watermark")
                self.watermark = dt.datetime.fromisoformat(wm) if wm else None
                self._pclock = {k: dt.datetime.fromisoformat(v) for k, v in p.get("partitions", {}).items()}
            elif kind == "budget":
                b = self._by_name.get(p["budget"])
                if b is None or b.cfg.currency != p["currency"]:
                    continue
                st = BudgetState(
                    b,
                    dt.datetime.fromisoformat(p["period_start"]),
                    dt.datetime.fromisoformat(p["period_end"]),
                    p.get("run_id"),
                )
                st.total = Decimal(p["total"])
                st.others = {k: Decimal(v) for k, v in p["others"].items()} or None
                st.last_event = dt.datetime.fromisoformat(p["last_event"])
                st.asof = int(p.get("asof", legacy_asof))
                bkey: tuple[str, Any] = (b.cfg.name, st.run_id if st.run_id is not None else st.period_start)
                self._budget_states[bkey] = st
                self._recheck.add(st)
                if st.run_id is None and (b.current is None or st.period_start > b.current.period_start):
                    b.current = st
                if st.run_id is None:
                    self._note_end(st.period_end)
            elif kind == "anomaly":
                a = AnomalyState(p["dim"], p["value"], p["currency"], int(p["bucket"]))
                a.cur = Decimal(p["cur"])
                a.children = {k: Decimal(v) for k, v in p["children"].items()}
                a.mean = None if p["mean"] is None else Decimal(p["mean"])
                a.child_means = {k: Decimal(v) for k, v in p["child_means"].items()}
                a.n, a.quiet_until, a.last_fired = int(p["n"]), int(p["quiet_until"]), int(p["last_fired"])
                a.asof = int(p.get("asof", legacy_asof))
                self._anomaly_states[(a.dim, a.value, a.currency)] = a
                self._adim_states.setdefault(a.dim, {}).setdefault(a.value, a)
        if self.watermark is not None:
            self._note_end(self.watermark + self.settings.anomaly_idle_ttl / 4)

    # ------------------------------------------------------------------ views
    def budget_states(self) -> list[BudgetState]:
        return list(self._budget_states.values())

    def anomaly_states(self) -> list[AnomalyState]:
        return list(self._anomaly_states.values())

    def total(self, budget: str, at: dt.datetime | None = None, *, run_id: str | None = None) -> Money:
        """Running total of ``budget`` in the period containing ``at`` (or for ``run_id``)."""
        b = self._by_name[budget]
        if run_id is not None:
            st = self._budget_states.get((budget, run_id))
        else:
            assert at is not None, "give the instant whose period you want, or run_id"
            st = self._budget_states.get((budget, period_bounds(b.cfg.period, at)[0]))
        return Money(st.total if st is not None else _ZERO, b.cfg.currency)

    def state_count(self) -> tuple[int, int]:
        """(budget states, anomaly states) held in memory."""
        return len(self._budget_states), len(self._anomaly_states)
