"""The SQL seam shared by the warehouse-table hooks (Snowflake, Databricks, BigQuery, Redshift Serverless).

Each hook runs its SQL through a DB-API 2 connection. By default that connection comes from the official
provider hook it extends (``SnowflakeHook.get_conn()``, ``DatabricksSqlHook.get_conn()``,
``BigQueryHook.get_conn()``); a caller may hand in any other DB-API connection instead (``connection=``),
which is how the tests run the unchanged SQL against DuckDB / SQLite copies of the documented system tables.
The SQL uses only constructs the platforms and DuckDB share and inlines no user text (timestamps are
formatted from ``datetime`` objects, identifiers are validated), so one statement serves both.
"""

from __future__ import annotations

import re
from typing import Any

from finops_provider.core.config import FinOpsConfig
from finops_provider.core.pricing import RateCard

_IDENT_RE = re.compile(r'^[A-Za-z0-9_$."`\-]+$')


def fetch_dicts(connection: Any, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Run ``sql`` on a DB-API connection; rows as dicts keyed by lower-cased column names.

    :param params: bound parameters in the connection's paramstyle (user text never goes into ``sql``).
    """
    cur = connection.cursor()
    try:
        if params is None:
            cur.execute(sql)
        else:
            cur.execute(sql, params)
        cols = [str(d[0]).lower() for d in cur.description or ()]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
    finally:
        cur.close()


def identifier(name: str, what: str) -> str:
    """A (possibly qualified) table name, validated so it can be placed in SQL text."""
    if not name or not _IDENT_RE.match(name):
        raise ValueError(f"{what}: {name!r} is not a table name (letters, digits, _ $ . - and quotes only)")
    return name


def rate_card_for(config: FinOpsConfig | None) -> RateCard:
    """The shipped rate cards with the config's overrides (the one price source of every hook)."""
    return RateCard.for_config(config)
