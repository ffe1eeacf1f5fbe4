"""Collect billed costs from a billing source into the ledger, idempotently per window."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from finops_provider.operators._common import as_utc, floor_day


class CollectCostsOperator(BaseOperator):
    """Collect one source's costs for a window (default: the DAG run's data interval) into the ledger.

    Re-running for the same window restates, never adds (the collector replaces its window in the ledger).
    A trailing re-pull (``trailing_days``) re-reads recent days so late and restated billing data lands.

    :param source: a registered collector (``aws``, ``gcp``, ``azure``, ... — see ``finops_provider.collect``).
    :param start: window start (templated; default ``{{ data_interval_start }}``), floored to the day.
    :param end: window end, exclusive (templated; default ``{{ data_interval_end }}``), rounded up to a day.
    :param trailing_days: also re-pull this many days before ``start`` (late / restated data).
    :param conn_id: the source's Airflow connection (default: the source's default connection).
    :param options: collector options, for example ``{"tag_key": "airflow_dag_id"}`` (templated).
    :param config_path: FinOps config.yaml (default: ``[finops] config_file`` / ``FINOPS_CONFIG``).
    :param ledger_url: ledger URL (default: the configured ledger).

    Returns (XCom) the collection summary: rows, provisional rows, API requests, bytes scanned, totals per
    currency as exact strings, window, and the ledger counts (inserted / restated / unchanged / removed).
    """

    template_fields: Sequence[str] = ("source", "start", "end", "conn_id", "options", "config_path")
    ui_color = "#e8f5e9"

    def __init__(
        self,
        *,
        source: str,
        start: Any = "{{ data_interval_start }}",
        end: Any = "{{ data_interval_end }}",
        trailing_days: int = 3,
        conn_id: str | None = None,
        options: dict[str, Any] | None = None,
        config_path: str | None = None,
        ledger_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.start = start
        self.end = end
        self.trailing_days = trailing_days
        self.conn_id = conn_id
        self.options = options or {}
        self.config_path = config_path
        self.ledger_url = ledger_url

    def window(self) -> tuple[dt.datetime, dt.datetime]:
        start = floor_day(as_utc(self.start, "start")) - dt.timedelta(days=self.trailing_days)
        end = as_utc(self.end, "end")
        end = floor_day(end) if end == floor_day(end) else floor_day(end) + dt.timedelta(days=1)
        if end <= start:
            raise ValueError(f"window end {end.date()} must be after start {start.date()}")
        return start, end

    def execute(self, context: Any) -> dict[str, Any]:
        from finops_provider.collect import get_collector
        from finops_provider.settings import get_config, get_ledger

        collector = get_collector(self.source)
        cfg = get_config(self.config_path)
        ledger = get_ledger(self.ledger_url, cfg)
        start, end = self.window()
        try:
            res, ing = collector(ledger, cfg, start, end, conn_id=self.conn_id, **self.options)
        finally:
            ledger.close()
        out = res.to_json()
        out["ledger"] = {k: v for k, v in ing.to_json().items() if k != "totals"}
        self.log.info(
            "collected %s %s..%s: %d rows (%d provisional), %d request(s), totals %s; ledger %d new, %d restated, "
            "%d unchanged, %d removed",
            self.source, start.date(), end.date(), out["rows"], out["provisional_rows"], out["requests"],
            out["totals"], ing.inserted, ing.restated, ing.unchanged, ing.removed,
        )  # fmt: skip
        return out
