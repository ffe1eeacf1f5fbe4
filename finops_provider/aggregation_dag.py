"""The scheduled FinOps aggregation DAG: collect every configured source for a trailing window, reconcile
run-time estimates with billed truth, evaluate budgets (actual + forecast) and anomalies, publish the executive
summary (Markdown, JSON, HTML under ``$FINOPS_HOME/reports/<period>/``, optional Slack digest).

Use the factory in a DAG file::

    from finops_provider.aggregation_dag import build_aggregation_dag

    dag = build_aggregation_dag(
        dag_id="finops_aggregation",
        sources={"aws": {"options": {"tag_key": "airflow_dag_id"}}, "focus": {"path": "/exports/focus.parquet"}},
        schedule="@daily",          # or "@hourly"
        trailing_days=3,
        slack_conn_id="slack_default",
    )

Each source is one task (``collect_<name>``): a :class:`CollectCostsOperator` for a registered collector, or a
FOCUS file ingest for ``focus`` / ``focus_*`` sources (``{"path": ...}``). A source whose connection is not
defined, whose SDK is not installed or whose file is absent is **skipped with a warning**; downstream tasks run
(``none_failed``), so the report covers the sources that are there. A source that fails for real (an API error)
fails its task and the run, after its retries.

Idempotent and backfillable: collectors replace their window in the ledger, reconciliation only supersedes
estimates that have truth, evaluation claims nothing (enforcement acts from the callbacks / listener, exactly
once), and the report files are overwritten. Running an interval twice changes nothing beyond restated data.

Nothing heavy is imported at parse time: ``airflow.sdk`` and the operator classes only.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator

from finops_provider.operators.collect import CollectCostsOperator
from finops_provider.operators.focus_ingest import IngestFocusFileOperator

#: a source's default connection, checked before collecting (missing -> skipped)
DEFAULT_CONNS = {
    "aws": "aws_default",
    "aws-exports": "aws_default",
    "redshift": "aws_default",
    "gcp": "google_cloud_default",
    "bigquery": "google_cloud_default",
    "azure": "azure_default",
    "synapse": "azure_default",
    "fabric": "azure_default",
    "databricks": "databricks_default",
    "snowflake": "snowflake_default",
    "k8s": "kubernetes_default",
}


def _skip(reason: str) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    raise AirflowSkipException(reason)


def _connection_missing(conn_id: str) -> str | None:
    """Why ``conn_id`` cannot be used (None when it is defined)."""
    from airflow.sdk import Connection

    try:
        Connection.get(conn_id)
    except Exception as e:  # AirflowNotFoundException (task SDK) or the ORM one under dag.test()
        if "NotFound" in type(e).__name__ or "isn't defined" in str(e):
            return f"connection {conn_id!r} is not defined"
        raise
    return None


#: the run's data interval; a manual run without a logical date has none: the day before it ran
WINDOW_START = (
    "{{ data_interval_start if data_interval_start is defined and data_interval_start "
    "else dag_run.run_after - macros.timedelta(days=1) }}"
)
WINDOW_END = "{{ data_interval_end if data_interval_end is defined and data_interval_end else dag_run.run_after }}"


class CollectSourceOperator(CollectCostsOperator):
    """:class:`CollectCostsOperator` that skips (with a warning) a source that is not set up here: no
    connection, or the collector's SDK / provider is not installed. Real errors still fail the task.
    The window also works for manual runs without a logical date (the day before ``run_after``)."""

    def __init__(self, *, start: Any = WINDOW_START, end: Any = WINDOW_END, **kwargs: Any) -> None:
        super().__init__(start=start, end=end, **kwargs)

    def execute(self, context: Any) -> dict[str, Any]:
        conn_id = self.conn_id or DEFAULT_CONNS.get(self.source)
        if conn_id and (why := _connection_missing(conn_id)):
            self.log.warning("source %s skipped: %s", self.source, why)
            _skip(f"source {self.source} skipped: {why}")
        try:
            from finops_provider.collect import get_collector

            get_collector(self.source)
        except ImportError as e:
            self.log.warning("source %s skipped: its collector cannot be imported (%s)", self.source, e)
            _skip(f"source {self.source} skipped: {e}")
        return super().execute(context)


class IngestFocusSourceOperator(IngestFocusFileOperator):
    """FOCUS file source: a local file that is not there (yet) is skipped with a warning, not a failure."""

    def execute(self, context: Any) -> Any:
        if "://" not in self.path and not Path(self.path).exists():
            self.log.warning("source %s skipped: file %s does not exist", self.task_id, self.path)
            _skip(f"FOCUS file {self.path} does not exist")
        return super().execute(context)


def _interval(context: Any, trailing_days: int) -> tuple[dt.datetime, dt.datetime]:
    """The run's data interval widened by the trailing re-pull days (UTC, whole days)."""
    end = _interval_end(context)
    start = _utc(context.get("data_interval_start") or end - dt.timedelta(days=1))
    # (same default window as CollectSourceOperator's templates)
    day = dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC) - dt.timedelta(days=trailing_days)
    end_day = dt.datetime(end.year, end.month, end.day, tzinfo=dt.UTC)
    return day, end_day if end_day == end else end_day + dt.timedelta(days=1)


class ReconcileOperator(BaseOperator):
    """Supersede the window's run-time estimates that now have billed truth (error kept per platform).

    Returns (XCom) the reconcile report: superseded / pending rows, per-platform accuracy (exact strings)."""

    template_fields = ("config_path",)

    def __init__(
        self, *, trailing_days: int = 3, ledger_url: str | None = None, config_path: str | None = None, **kw: Any
    ) -> None:
        super().__init__(**kw)
        self.trailing_days = trailing_days
        self.ledger_url = ledger_url
        self.config_path = config_path

    def execute(self, context: Any) -> dict[str, Any]:
        from finops_provider.core.reconcile import reconcile
        from finops_provider.settings import get_config, get_ledger

        start, end = _interval(context, self.trailing_days)
        with get_ledger(self.ledger_url, get_config(self.config_path)) as ledger:
            rep = reconcile(ledger, start, end)
        out = rep.to_json()
        out.pop("tasks", None)  # per-task rows stay in the ledger; XCom keeps the totals
        self.log.info("reconciled %s..%s: %d superseded, %d pending", start, end, rep.superseded_rows, rep.pending_rows)
        return out


def _utc(v: Any) -> dt.datetime:
    """A plain aware UTC datetime from a context value (pendulum or stdlib; naive values are UTC)."""
    d = dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, tzinfo=v.tzinfo)
    return d.replace(tzinfo=dt.UTC) if d.tzinfo is None else d.astimezone(dt.UTC)


def _interval_end(context: Any) -> dt.datetime:
    """The run's data interval end; a manual run without a logical date uses its ``run_after``."""
    end = context.get("data_interval_end")
    if end is None:
        end = getattr(context.get("dag_run"), "run_after", None) or dt.datetime.now(dt.UTC)
    return _utc(end)


def _report_now(context: Any) -> dt.datetime:
    """The instant the report describes: just before the end of the run's data interval."""
    return _interval_end(context) - dt.timedelta(microseconds=1)


class EvaluateOperator(BaseOperator):
    """Evaluate every calendar budget (actual + forecast) and scan for anomalies, without side effects
    (breaches are claimed and acted on by the enforcement path, exactly once). Returns (XCom) counts and the
    crossed thresholds."""

    def __init__(self, *, ledger_url: str | None = None, config_path: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.ledger_url = ledger_url
        self.config_path = config_path

    def execute(self, context: Any) -> dict[str, Any]:
        from finops_provider.core.anomaly import detector_from_config
        from finops_provider.core.budgets import BudgetEngine
        from finops_provider.settings import get_config, get_ledger

        cfg = get_config(self.config_path)
        now = _report_now(context)
        with get_ledger(self.ledger_url, cfg) as ledger:
            statuses = BudgetEngine(cfg, ledger).evaluate_all(now)
            anomalies = detector_from_config(cfg.anomaly).scan(ledger, now.date())
        crossed = [
            {"budget": b.budget, "threshold_pct": str(b.threshold_pct), "basis": b.basis}
            for s in statuses
            for b in s.breaches
        ]
        self.log.info(
            "%d budget(s), %d threshold(s) crossed, %d anomaly(ies)", len(statuses), len(crossed), len(anomalies)
        )
        return {"budgets": len(statuses), "crossed": crossed, "anomalies": len(anomalies)}


def report_dir(period: str, now: dt.datetime, base: str | Path | None = None) -> Path:
    """``<base or $FINOPS_HOME/reports>/<period>-<period start>``, e.g. ``reports/month-2026-10-01``."""
    from finops_provider.core.budgets import period_bounds
    from finops_provider.core.ledger import finops_home

    start, _ = period_bounds(period, now)
    root = Path(base) if base else finops_home() / "reports"
    return root / f"{period}-{start:%Y-%m-%d}"


class PublishSummaryOperator(BaseOperator):
    """Build the executive summary of the period containing the run's interval end and write
    ``summary.md``, ``summary.json`` and ``summary.html`` (overwritten: idempotent); optionally send the Slack
    digest (summary + link) — once per DAG, period and interval, through the outbox: a re-run, retry or backfill
    of the same interval sends no second digest, and a digest Slack refused is retried with backoff.
    Returns (XCom) the files written, the billed totals per currency and whether the digest is delivered."""

    template_fields = ("report_url", "slack_conn_id")

    def __init__(
        self,
        *,
        period: str = "month",
        out_dir: str | None = None,
        slack_conn_id: str | None = None,
        report_url: str | None = None,
        ledger_url: str | None = None,
        config_path: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.period = period
        self.out_dir = out_dir
        self.slack_conn_id = slack_conn_id
        self.report_url = report_url
        self.ledger_url = ledger_url
        self.config_path = config_path

    def execute(self, context: Any) -> dict[str, Any]:
        from finops_provider.core.summary import build_summary, render_json, render_markdown
        from finops_provider.reports.html import render_html
        from finops_provider.settings import get_config, get_ledger

        cfg = get_config(self.config_path)
        now = _report_now(context)
        with get_ledger(self.ledger_url, cfg) as ledger:
            summary = build_summary(ledger, cfg, now=now, period=self.period)
        folder = report_dir(self.period, now, self.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        files = {
            "md": folder / "summary.md",
            "json": folder / "summary.json",
            "html": folder / "summary.html",
        }
        files["md"].write_text(render_markdown(summary), encoding="utf-8")
        files["json"].write_text(render_json(summary), encoding="utf-8")
        files["html"].write_text(render_html(summary), encoding="utf-8")
        sent = False
        if self.slack_conn_id:
            sent = self._send_digest_once(summary, self.report_url or files["html"].as_uri(), now)
        self.log.info("published the %s summary to %s (totals %s)", self.period, folder, summary["totals"]["billed"])
        return {
            "files": {k: str(v) for k, v in files.items()},
            "totals": summary["totals"]["billed"],
            "slack_digest": sent,
        }

    def _send_digest_once(self, summary: dict[str, Any], link: str, now: dt.datetime) -> bool:
        """Enqueue this interval's digest (outbox kind ``slack_digest``, unique key) and deliver it if due.

        :return: True once the digest of this interval is delivered (now or by an earlier try).
        :raises RuntimeError: Slack refused it; the outbox retries it (this task's retry, or any drainer).
        """
        from finops_provider.callbacks.runtime import drain, outbox_for
        from finops_provider.core.outbox import DONE
        from finops_provider.settings import get_config, get_ledger

        key = f"digest|{self.dag_id}|{self.task_id}|{self.period}|{now.isoformat()}|{self.slack_conn_id}"
        payload = {
            "kind": "digest",
            "dag_id": self.dag_id,
            "summary": summary,
            "link": link,
            "route": {"slack_conn_id": self.slack_conn_id},
        }
        with get_ledger(self.ledger_url, get_config(self.config_path)) as ledger:
            box = outbox_for(ledger)
            if not box.enqueue("slack_digest", key, payload):
                self.log.info("the Slack digest of this interval was queued by an earlier try")
            drain(ledger, keys=[key])
            status, error = box.status(key) or ("missing", None)
        if status != DONE:  # the error's type only: the outbox row keeps the message
            why = (error or "").split(":", 1)[0]
            raise RuntimeError(f"the Slack digest was not delivered ({status}, {why}); the outbox retries it")
        return True


def build_aggregation_dag(
    dag_id: str = "finops_aggregation",
    *,
    sources: Mapping[str, Mapping[str, Any]],
    schedule: str | None = "@daily",
    trailing_days: int = 3,
    period: str = "month",
    start_date: dt.datetime | str | None = None,
    catchup: bool = False,
    out_dir: str | None = None,
    slack_conn_id: str | None = None,
    report_url: str | None = None,
    ledger_url: str | None = None,
    config_path: str | None = None,
    tags: list[str] | None = None,
    default_args: dict[str, Any] | None = None,
) -> DAG:
    """Build the aggregation DAG.

    :param sources: ``name -> {"conn_id", "options", "source"}`` for collectors (``source`` defaults to the
        name, so two AWS accounts can be ``aws_prod: {"source": "aws", "conn_id": ...}``), or
        ``focus* -> {"path", "conn_id"}`` for FOCUS files.
    :param start_date: first interval (datetime or ISO string; default 2026-01-01 UTC); backfills start here.
    :param schedule: ``@daily`` (default) or ``@hourly`` (or any Airflow schedule).
    :param trailing_days: days re-pulled before each interval (late and restated bills).
    :param period: the summary's period: ``day``, ``week`` or ``month``.
    :param out_dir: report folder root (default ``$FINOPS_HOME/reports``).
    :param slack_conn_id: send the Slack digest through this connection (none: no digest).
    :param report_url: link in the digest (default: the HTML file's ``file://`` URI).
    """
    if period not in ("day", "week", "month"):
        raise ValueError(f"period {period!r}: use day, week or month")
    if not sources:
        raise ValueError("sources: configure at least one source, e.g. {'aws': {}}")
    if isinstance(start_date, str):
        start_date = dt.datetime.fromisoformat(start_date)
        start_date = start_date if start_date.tzinfo else start_date.replace(tzinfo=dt.UTC)
    with DAG(
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date or dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        catchup=catchup,
        max_active_runs=1,
        tags=tags or ["finops"],
        doc_md=__doc__,
        default_args=default_args or {"retries": 2, "retry_delay": dt.timedelta(minutes=10)},
    ) as dag:
        common = {"ledger_url": ledger_url, "config_path": config_path}
        collects: list[BaseOperator] = []
        for name, spec in sources.items():
            task_id = f"collect_{name.replace('-', '_')}"
            if name == "focus" or name.startswith("focus_"):
                collects.append(
                    IngestFocusSourceOperator(
                        task_id=task_id,
                        path=str(spec["path"]),
                        conn_id=spec.get("conn_id"),
                        source=str(spec.get("source_name", name)),
                        **common,
                    )
                )
            else:
                collects.append(
                    CollectSourceOperator(
                        task_id=task_id,
                        source=str(spec.get("source", name)),
                        conn_id=spec.get("conn_id"),
                        options=dict(spec.get("options") or {}),
                        trailing_days=trailing_days,
                        **common,
                    )
                )
        rec = ReconcileOperator(task_id="reconcile", trailing_days=trailing_days, trigger_rule="none_failed", **common)
        ev = EvaluateOperator(task_id="evaluate_budgets_and_anomalies", **common)
        pub = PublishSummaryOperator(
            task_id="publish_summary",
            period=period,
            out_dir=out_dir,
            slack_conn_id=slack_conn_id,
            report_url=report_url,
            **common,
        )
        collects >> rec >> ev >> pub  # type: ignore[operator]
    return dag


def env_sources() -> dict[str, dict[str, Any]]:
    """Sources for the example DAG: AWS Cost Explorer always (skipped without ``aws_default``), plus the FOCUS
    file named by ``FINOPS_AGGREGATION_FOCUS_FILE`` when set."""
    out: dict[str, dict[str, Any]] = {"aws": {"options": {"tag_key": "airflow_dag_id"}}}
    if os.environ.get("FINOPS_AGGREGATION_FOCUS_FILE"):
        out["focus"] = {"path": os.environ["FINOPS_AGGREGATION_FOCUS_FILE"]}
    return out
