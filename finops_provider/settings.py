"""Provider settings: the ``[finops]`` section of airflow.cfg (or ``AIRFLOW__FINOPS__*``) with fallbacks.

Resolution order for the FinOps config file: argument > ``FINOPS_CONFIG`` env > ``[finops] config_file``.
Resolution order for the ledger URL: argument > ``FINOPS_LEDGER_URL`` env > config ``ledger.url`` >
the Airflow connection ``[finops] ledger_conn_id`` (default ``finops_ledger_default``) when it exists >
SQLite under ``$FINOPS_HOME``.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from finops_provider.core.config import FinOpsConfig, load_config
from finops_provider.core.ledger import Ledger, default_ledger_url

log = logging.getLogger(__name__)


def _airflow_option(key: str, fallback: str) -> str:
    env = os.environ.get(f"AIRFLOW__FINOPS__{key.upper()}")
    if env is not None:
        return env
    try:
        from airflow.configuration import conf

        return str(conf.get("finops", key, fallback=fallback))
    except Exception:  # airflow not configured: plain-Python use
        return fallback


def config_path(path: str | Path | None = None) -> Path | None:
    p = path or os.environ.get("FINOPS_CONFIG") or _airflow_option("config_file", "")
    return Path(p) if p else None


@lru_cache(maxsize=8)
def _cached_config(path: str | None) -> FinOpsConfig:
    return load_config(path)


def get_config(path: str | Path | None = None) -> FinOpsConfig:
    """The validated FinOps config (cached per path)."""
    p = config_path(path)
    return _cached_config(str(p) if p else None)


def ledger_url(url: str | None = None, config: FinOpsConfig | None = None) -> str:
    if url:
        return url
    if os.environ.get("FINOPS_LEDGER_URL"):
        return os.environ["FINOPS_LEDGER_URL"]
    cfg = config or get_config()
    if cfg.ledger.url:
        return cfg.ledger.url
    conn_id = _airflow_option("ledger_conn_id", cfg.ledger.airflow_conn_id)
    from_conn = _url_from_connection(conn_id)
    return from_conn or default_ledger_url()


def _url_from_connection(conn_id: str) -> str | None:
    """The ledger URL held by an Airflow connection, or None when it does not exist / Airflow is absent."""
    env_name = f"AIRFLOW_CONN_{conn_id.upper()}"
    if env_name not in os.environ and not os.environ.get("FINOPS_LOOKUP_LEDGER_CONNECTION"):
        return None  # avoid a secrets-backend round trip on every callback when not configured
    try:
        from finops_provider.hooks.ledger import FinOpsLedgerHook

        return FinOpsLedgerHook(finops_ledger_conn_id=conn_id).get_url()
    except Exception as e:
        log.warning("ledger connection %s not usable (%s); using the default ledger", conn_id, type(e).__name__)
        return None


def get_ledger(url: str | None = None, config: FinOpsConfig | None = None) -> Ledger:
    return Ledger(ledger_url(url, config))
