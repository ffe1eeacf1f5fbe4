"""Anomaly detection and forecast accuracy (issue 8): precision, recall, F1, false alerts, delay, forecast MAPE.

Run: ``.venv/bin/python bench/anomaly_eval.py [--seed 8] [--dags 60] [--days 150]``.

A seeded generator builds realistic daily cost series per DAG: weekly seasonality, a growth trend, month-start
batch jobs, noisy small DAGs and large stable ones (each DAG the sum of its tasks), planned changes (announced
with a ``planned`` label, as a user would) — and injects labelled anomalies of five kinds: a one-day spike, a
level shift, a slow ramp, a drop to zero, and one task exploding inside a stable DAG. Each kind is run as its own
scenario (same DAGs, only that kind injected) so per-kind precision is well defined; ``all`` mixes every kind.

Detectors, in the same run and on the same series, with the same warm-up and the same ``$`` impact gate:

* ``robust`` — :class:`finops_provider.core.anomaly.RobustDetector` (the default);
* ``threshold_pct`` — the seed's rule (above 150 % of the median of the previous 14 days);
* ``mean_3sigma`` — mean ± 3σ of the previous 14 days;
* ``ewma`` — :class:`finops_provider.core.anomaly.EwmaDetector`, the streaming variant, fed closed days.

Scoring is event-level: an injected anomaly is found when an alert of its scope falls in its window (the day
for a spike or an exploding task, the first 7 days of a level shift, the ramp plus 3 days, the outage days);
an alert outside every window is a false alert. Delay is periods from the start of the anomaly to its first
alert. Forecasts: each team's month (a team is 6 DAGs) forecast on days 7, 10, 14 and 21 with
:func:`finops_provider.core.forecast.forecast_period_end` vs the linear burn rate, MAPE over team-months.

Prints one table and one ``BENCH {json}`` line per figure. Nothing is asserted here; the seeded small version
is a test (``tests/unit/core/test_anomaly_eval.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit
from finops_provider.core.anomaly import EwmaDetector, RobustDetector, threshold_rule
from finops_provider.core.budgets import burn_rate_forecast
from finops_provider.core.forecast import forecast_period_end
from finops_provider.core.money import Money

KINDS = ("spike", "level_shift", "ramp", "drop_to_zero", "task_explosion")
START = dt.datetime(2025, 1, 13, tzinfo=dt.UTC)  # mid-month: the first month start falls inside the warm-up
WARMUP = 28  # days; no detector is scored before this
MIN_IMPACT = Decimal(25)  # the $ gate every detector gets
DETECTORS = ("robust", "threshold_pct", "mean_3sigma", "ewma")


@dataclass
class Event:
    scope: str
    kind: str
    start: int  # day index
    end: int  # last day index of the scoring window (inclusive)
    task: str | None = None


@dataclass
class Scope:
    name: str
    team: str
    total: list[Decimal]
    tasks: dict[str, list[Decimal]]
    planned: list[tuple[int, int]] = field(default_factory=list)  # [start, end) day indexes
    events: list[Event] = field(default_factory=list)
    stable: bool = False


def _day(i: int) -> dt.datetime:
    return START + dt.timedelta(days=i)


def generate(seed: int, n_dags: int, days: int, kind: str | None) -> list[Scope]:
    """Cost series per DAG with the anomalies of ``kind`` (``all``: every kind; None: none) injected."""
    rng = random.Random(seed)
    out = []
    for k in range(n_dags):
        stable = k % 2 == 0
        base = rng.uniform(500, 3000) if stable else rng.uniform(30, 120)
        sigma = rng.uniform(0.03, 0.06) if stable else rng.uniform(0.15, 0.3)
        weekend = rng.uniform(0.7, 0.95) if stable else rng.uniform(0.3, 0.7)
        growth = rng.uniform(0.0, 0.15) / 30  # per day: up to +15 % a month
        month_start = rng.random() < 0.35  # a month-start batch job
        ms_mult = rng.uniform(2.5, 5.0)
        n_tasks = rng.randint(3, 6)
        weights = [rng.uniform(0.5, 2.0) for _ in range(n_tasks)]
        wsum = sum(weights)
        planned: list[tuple[int, int]] = []
        level = [1.0] * days
        if rng.random() < 0.2:  # a planned change: migration to a bigger cluster, announced
            p0 = rng.randint(WARMUP + 5, days - 20)
            mult = rng.uniform(1.6, 2.2)
            for i in range(p0, days):
                level[i] *= mult
            planned.append((p0, p0 + 7))
        task_vals: dict[str, list[float]] = {f"t{j}": [] for j in range(n_tasks)}
        for i in range(days):
            d = _day(i)
            season = weekend if d.weekday() >= 5 else 1.0
            mult = (1 + growth) ** i * season * level[i]
            for j in range(n_tasks):
                v = base * weights[j] / wsum * mult * rng.lognormvariate(0, sigma)
                if month_start and d.day == 1 and j == 0:  # the batch job scales with the DAG, not the weekday
                    v += base * (ms_mult - 1) * (1 + growth) ** i * level[i]
                task_vals[f"t{j}"].append(v)
        name = f"dag_{k:03d}"
        sc = Scope(name, f"team_{k // 6}", [], {}, planned, stable=stable)
        # injections -----------------------------------------------------------
        kinds = KINDS if kind == "all" else (kind,) if kind else ()
        kinds = tuple(x for x in kinds if x != "task_explosion" or stable)
        n_inj = (rng.choice((0, 1, 1, 2)) if kind == "all" else rng.choice((0, 1, 1))) if kinds else 0
        taken: list[tuple[int, int]] = [(a - 10, b + 10) for a, b in planned]
        for _ in range(n_inj):
            kd = rng.choice(kinds)
            for _try in range(20):
                s0 = rng.randint(WARMUP + 7, days - 25)
                if all(not (a - 21 <= s0 <= b + 21) for a, b in taken):
                    break
            else:
                continue
            ev = _inject(rng, kd, s0, days, task_vals, name)
            taken.append((ev.start, ev.end))
            sc.events.append(ev)
        sc.tasks = {t: [Decimal(repr(round(v, 2))) for v in vals] for t, vals in task_vals.items()}
        sc.total = [sum((sc.tasks[t][i] for t in sc.tasks), Decimal(0)) for i in range(days)]
        out.append(sc)
    return out


def _inject(rng: random.Random, kind: str, s0: int, days: int, tv: dict[str, list[float]], name: str) -> Event:
    tasks = list(tv)
    if kind == "spike":
        m = rng.uniform(2.5, 5.0)
        for t in tasks:
            tv[t][s0] *= m
        return Event(name, kind, s0, s0)
    if kind == "level_shift":
        m = rng.uniform(1.7, 2.5)
        for t in tasks:
            for i in range(s0, days):
                tv[t][i] *= m
        return Event(name, kind, s0, s0 + 6)
    if kind == "ramp":
        length = rng.randint(10, 20)
        m = rng.uniform(2.0, 3.0)
        for t in tasks:
            for i in range(s0, days):
                tv[t][i] *= 1 + (m - 1) * min((i - s0 + 1) / length, 1.0)
        return Event(name, kind, s0, s0 + length + 3)
    if kind == "drop_to_zero":
        length = rng.randint(2, 5)
        for t in tasks:
            for i in range(s0, s0 + length):
                tv[t][i] = 0.0
        return Event(name, kind, s0, s0 + length - 1)
    # one task explodes inside a stable DAG
    t = rng.choice(tasks)
    tv[t][s0] *= rng.uniform(6.0, 12.0)
    return Event(name, "task_explosion", s0, s0, task=t)


# ------------------------------------------------------------------ detectors -> alert day indexes
def run_robust(sc: Scope) -> list[tuple[int, str | None]]:
    det = RobustDetector(min_impact=MIN_IMPACT, warmup=WARMUP)
    series = {_day(i): v for i, v in enumerate(sc.total)}
    kids = {t: {_day(i): v for i, v in enumerate(vals)} for t, vals in sc.tasks.items()}
    planned = [(_day(a), _day(b)) for a, b in sc.planned]
    found = det.detect_series(series, scope=(("dag", sc.name),), children=kids, planned=planned)
    return [((a.window_start - START).days, a.root_cause[1] if a.root_cause else None) for a in found]


def _planned(sc: Scope, i: int) -> bool:
    return any(a <= i < b for a, b in sc.planned)


def run_threshold(sc: Scope) -> list[tuple[int, str | None]]:
    out = []
    for i in range(WARMUP, len(sc.total)):
        hit, _, _ = threshold_rule(
            sc.total[max(0, i - 14) : i], sc.total[i], threshold_pct=Decimal(150), min_impact=MIN_IMPACT
        )
        if hit and not _planned(sc, i):
            out.append((i, None))
    return out


def run_3sigma(sc: Scope) -> list[tuple[int, str | None]]:
    out = []
    xs = [float(v) for v in sc.total]
    for i in range(WARMUP, len(xs)):
        h = xs[max(0, i - 14) : i]
        mu, sd = statistics.fmean(h), statistics.pstdev(h)
        if abs(xs[i] - mu) > 3 * sd and abs(xs[i] - mu) >= float(MIN_IMPACT) and not _planned(sc, i):
            out.append((i, None))
    return out


def run_ewma(sc: Scope) -> list[tuple[int, str | None]]:
    det = EwmaDetector(period=dt.timedelta(days=1), warmup=WARMUP, min_impact=MIN_IMPACT, alpha=0.15)
    scope = (("dag", sc.name),)
    out = []
    for i, v in enumerate(sc.total):
        if _planned(sc, i):
            det.suppress(scope, _day(i + 1))
        a = det.update(scope, _day(i), v)
        if a is not None:
            out.append((i, None))
    return out


RUNNERS: dict[str, Callable[[Scope], list[tuple[int, str | None]]]] = {
    "robust": run_robust,
    "threshold_pct": run_threshold,
    "mean_3sigma": run_3sigma,
    "ewma": run_ewma,
}


# ------------------------------------------------------------------ scoring
@dataclass
class Score:
    alerts: int = 0
    true_alerts: int = 0
    events: int = 0
    found: int = 0
    delays: list[int] = field(default_factory=list)
    root_cause_ok: int = 0
    root_cause_n: int = 0
    scope_days: int = 0

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else 1.0

    @property
    def recall(self) -> float:
        return self.found / self.events if self.events else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_per_scope_90d(self) -> float:
        return (self.alerts - self.true_alerts) / self.scope_days * 90 if self.scope_days else 0.0

    @property
    def delay(self) -> float:
        return statistics.fmean(self.delays) if self.delays else math.nan


def score(scopes: list[Scope], detector: str) -> Score:
    s = Score()
    for sc in scopes:
        alerts = [(i, rc) for i, rc in RUNNERS[detector](sc) if i >= WARMUP]
        s.scope_days += len(sc.total) - WARMUP
        s.alerts += len(alerts)
        for i, _ in alerts:
            if any(ev.start <= i <= ev.end for ev in sc.events):
                s.true_alerts += 1
        for ev in sc.events:
            s.events += 1
            hits = [(i, rc) for i, rc in alerts if ev.start <= i <= ev.end]
            if hits:
                s.found += 1
                s.delays.append(hits[0][0] - ev.start)
                if ev.task is not None:
                    s.root_cause_n += 1
                    s.root_cause_ok += hits[0][1] == ev.task
    return s


# ------------------------------------------------------------------ forecast
def forecast_mape(scopes: list[Scope], at_days: tuple[int, ...] = (7, 10, 14, 21)) -> dict[str, dict[int, float]]:
    """MAPE (%) of team month-end forecasts made on each day of ``at_days``: ours vs the linear burn rate."""
    teams: dict[str, list[Decimal]] = {}
    for sc in scopes:
        cur = teams.setdefault(sc.team, [Decimal(0)] * len(sc.total))
        for i, v in enumerate(sc.total):
            cur[i] += v
    n = len(next(iter(teams.values())))
    errs: dict[str, dict[int, list[float]]] = {"seasonal": defaultdict(list), "linear": defaultdict(list)}
    month = dt.datetime(START.year, START.month, 1, tzinfo=dt.UTC)
    while True:
        month = (month + dt.timedelta(days=32)).replace(day=1)
        nxt = (month + dt.timedelta(days=32)).replace(day=1)
        if (nxt - START).days > n:
            break
        m0, m1 = (month - START).days, (nxt - START).days
        for vals in teams.values():
            truth = sum(vals[m0:m1], Decimal(0))
            daily = {_day(i).date(): v for i, v in enumerate(vals)}
            for day in at_days:
                now = month + dt.timedelta(days=day - 1)  # the morning of day ``day``: days 1..day-1 are known
                known = {d: v for d, v in daily.items() if d < now.date()}
                fc, _ = forecast_period_end(known, month, nxt, now)
                spent = Money(sum((v for d, v in known.items() if d >= month.date()), Decimal(0)), "USD")
                lin = burn_rate_forecast(spent, month, nxt, now)
                errs["seasonal"][day].append(abs(float((fc.amount - truth) / truth)) * 100)
                errs["linear"][day].append(abs(float((lin.amount - truth) / truth)) * 100)
    return {k: {d: statistics.fmean(v) for d, v in by.items()} for k, by in errs.items()}


# ------------------------------------------------------------------ main
def evaluate(seed: int = 8, n_dags: int = 60, days: int = 150) -> dict[str, dict[str, Score]]:
    """Scores per scenario (each kind alone, and ``all``) per detector."""
    out: dict[str, dict[str, Score]] = {}
    for kind in (*KINDS, "all"):
        scopes = generate(seed, n_dags, days, kind)
        out[kind] = {d: score(scopes, d) for d in DETECTORS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--dags", type=int, default=60)
    ap.add_argument("--days", type=int, default=150)
    args = ap.parse_args()
    t0 = time.perf_counter()
    res = evaluate(args.seed, args.dags, args.days)
    mape = forecast_mape(generate(args.seed, args.dags, args.days, "all"))
    print(
        f"anomaly evaluation: seed {args.seed}, {args.dags} DAGs x {args.days} days "
        f"(warm-up {WARMUP}), impact gate ${MIN_IMPACT}, {time.perf_counter() - t0:.1f}s\n"
    )
    print(
        "| scenario | detector | events | alerts | precision | recall | F1 | false alerts / scope / 90 d | delay (d) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind, by in res.items():
        for det, s in by.items():
            print(
                f"| {kind} | {det} | {s.events} | {s.alerts} | {s.precision:.2f} | {s.recall:.2f} | {s.f1:.2f} | "
                f"{s.false_per_scope_90d:.2f} | {s.delay:.1f} |"
            )
    rc = res["task_explosion"]["robust"]
    print(f"\nroot cause (task_explosion, robust): {rc.root_cause_ok}/{rc.root_cause_n} name the exploding task")
    print("\n| forecast MAPE (team month-end) | day 7 | day 10 | day 14 | day 21 |")
    print("|---|---:|---:|---:|---:|")
    for k, by in mape.items():
        print(f"| {k} | " + " | ".join(f"{by[d]:.1f} %" for d in (7, 10, 14, 21)) + " |")
    print()
    ours = res["all"]["robust"]
    for kind, by in res.items():
        o = by["robust"]
        for base in ("threshold_pct", "mean_3sigma"):
            b = by[base]
            emit("anomaly_eval", f"f1_{kind}_vs_{base}", o.f1, "F1", baseline=base, baseline_value=b.f1,
                 target=">= 0.90 and > baselines" if kind == "all" else None,
                 met=(o.f1 >= 0.9 and o.f1 > b.f1) if kind == "all" else None)  # fmt: skip
        emit("anomaly_eval", f"precision_{kind}", o.precision, "ratio")
        emit("anomaly_eval", f"recall_{kind}", o.recall, "ratio")
        emit("anomaly_eval", f"delay_{kind}", 0.0 if math.isnan(o.delay) else o.delay, "days", higher_is_better=False)
    emit("anomaly_eval", "false_alerts_per_scope_90d", ours.false_per_scope_90d, "alerts", higher_is_better=False,
         target="<= 1", met=ours.false_per_scope_90d <= 1)  # fmt: skip
    spikes = res["spike"]["robust"]
    emit("anomaly_eval", "spike_delay", 0.0 if math.isnan(spikes.delay) else spikes.delay, "days",
         higher_is_better=False, target="0 (same interval)", met=spikes.delay == 0)  # fmt: skip
    emit("anomaly_eval", "root_cause_task_explosion", rc.root_cause_ok / max(rc.root_cause_n, 1), "ratio")
    for d in (7, 10, 14, 21):
        emit("anomaly_eval", f"forecast_mape_day{d}", mape["seasonal"][d], "%", baseline="linear burn rate",
             baseline_value=mape["linear"][d], higher_is_better=False,
             target="<= 10 % from day 10" if d >= 10 else None,
             met=mape["seasonal"][d] <= 10 if d >= 10 else None)  # fmt: skip
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
