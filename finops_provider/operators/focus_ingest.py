"""Ingest a FOCUS export file (local path, S3, GCS or ADLS / Blob) into the ledger."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from airflow.sdk import BaseOperator


class IngestFocusFileOperator(BaseOperator):
    """Read a FOCUS CSV or Parquet file with the core reader and upsert it into the ledger.

    Bad rows go to quarantine (with the column and the fix) and every valid row lands; re-ingesting the
    same file adds nothing.

    :param path: ``/local/file.parquet``, ``s3://bucket/key``, ``gs://bucket/object`` or
        ``wasb://container@account/blob`` / ``abfs://...`` (templated).
    :param conn_id: connection for the remote store (``aws_default``, ``google_cloud_default``, ``wasb_default``).
    :param source: the source name recorded with each row (default ``focus-file``).
    :param ledger_url: ledger URL (default: the configured ledger).
    :param config_path: FinOps config.yaml used for attribution.

    Returns (XCom) the ingest counts and totals per currency (exact strings).
    """

    template_fields: Sequence[str] = ("path", "conn_id", "source", "config_path")
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        path: str,
        conn_id: str | None = None,
        source: str = "focus-file",
        ledger_url: str | None = None,
        config_path: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.conn_id = conn_id
        self.source = source
        self.ledger_url = ledger_url
        self.config_path = config_path

    def _fetch(self, workdir: Path) -> Path:
        """Download a remote object with the official provider hook; local paths are used as they are."""
        u = urlparse(self.path)
        name = Path(u.path).name or "export.csv"
        target = workdir / name
        if u.scheme in ("", "file"):
            return Path(u.path if u.scheme else self.path)
        if u.scheme in ("s3", "s3a"):
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            S3Hook(aws_conn_id=self.conn_id or "aws_default").get_key(u.path.lstrip("/"), u.netloc).download_file(
                str(target)
            )
            return target
        if u.scheme == "gs":
            from airflow.providers.google.cloud.hooks.gcs import GCSHook

            GCSHook(gcp_conn_id=self.conn_id or "google_cloud_default").download(
                bucket_name=u.netloc, object_name=u.path.lstrip("/"), filename=str(target)
            )
            return target
        if u.scheme in ("wasb", "wasbs", "abfs", "abfss"):
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

            container = u.netloc.split("@", 1)[0]
            WasbHook(wasb_conn_id=self.conn_id or "wasb_default").get_file(
                str(target), container_name=container, blob_name=u.path.lstrip("/")
            )
            return target
        raise ValueError(
            f"path {self.path!r}: unsupported scheme {u.scheme!r}; use a local path, s3://, gs:// or wasb://"
        )

    def execute(self, context: Any) -> dict[str, Any]:
        from finops_provider.core.allocation import Attributor
        from finops_provider.core.focus import read_focus
        from finops_provider.settings import get_config, get_ledger

        cfg = get_config(self.config_path)
        with tempfile.TemporaryDirectory(prefix="finops-focus-") as tmp:
            local = self._fetch(Path(tmp))
            ledger = get_ledger(self.ledger_url, cfg)
            try:
                res = ledger.ingest(Attributor(cfg).apply_all(read_focus(local)), source=self.source)
            finally:
                ledger.close()
        self.log.info(
            "ingested %s: %d rows, %d new, %d restated, %d unchanged, %d quarantined; totals %s",
            self.path, res.rows_in, res.inserted, res.restated, res.unchanged, res.quarantined, res.totals,
        )  # fmt: skip
        return res.to_json()
