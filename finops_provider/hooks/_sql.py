"""The SQL seam shared by the warehouse-table hooks (Snowflake, Databricks, BigQuery, Redshift Serverless).

Each hook runs its SQL through a DB-API 2 connection. By default that connection comes from the official
provider hook it extends (``SnowflakeHook.get_conn()``, ``DatabricksSqlHook.get_conn()``,
``BigQueryHook.get_conn()``); a caller may hand in any other DB-API connection instead (``connection=``),
which is how the tests run the unchanged SQL against DuckDB / SQLite copies of the documented system tables.
The SQL uses only constructs the platforms and DuckDB share and inlines no user text (timestamps are
formatted from ``datetime`` objects, identifiers are validated), so one statement serves both.
"""

from __future__ import annotations

import enum
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from finops_provider.collect import CredentialsError
from finops_provider.core.config import FinOpsConfig
from finops_provider.core.pricing import RateCard
from finops_provider.core.retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

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


def error_code(exc: BaseException) -> str:
    """The error's class and the codes connectors attach (errno, SQLSTATE, HTTP status): never its message."""
    parts = [type(exc).__name__]
    context = getattr(exc, "context", None)
    for label, value in (
        ("errno", getattr(exc, "errno", None)),
        ("sqlstate", getattr(exc, "sqlstate", None)),
        ("HTTP", context.get("http-code") if isinstance(context, dict) else getattr(exc, "code", None)),
    ):
        if isinstance(value, int | str) and not isinstance(value, bool) and str(value).isalnum():
            parts.append(f"{label} {value}")
    return ", ".join(parts)


class Fault(enum.Enum):
    """How a vendor connector's error is handled by :class:`SqlSession`."""

    RETRY = "retry"  # throttling, 5xx, timeouts, a dropped connection: reconnect and run the statement again
    CREDENTIALS = "credentials"  # expired / revoked / wrong credentials: raise CredentialsError, never retry


#: a vendor classifier: the :class:`Fault` of an error, or ``None`` (not ours to handle: raised unchanged)
Classifier = Callable[[BaseException], "Fault | None"]


class SqlSession:
    """One source's DB-API connection with bounded retries, reconnects and credential errors that name the connection.

    Every statement is a read (the collectors only ``SELECT``), so running it again after a dropped connection,
    a throttled request or a timeout is safe. A connection that failed is closed and a new one is opened for the
    next attempt (when this session opened it; a connection handed in with ``connection=`` is reused).

    :param connect: opens a new DB-API connection (for example the provider hook's ``get_conn``).
    :param classify: the vendor's error classifier (:class:`Fault` or ``None``).
    :param what: names the source in logs and errors (never a secret).
    :param conn_id: the Airflow connection id named when credentials are refused.
    :param needs: what the connection's principal needs (role / grant), for the credentials message.
    :param connection: a connection to use instead of ``connect()`` (the tests' seam).
    :param fetch: runs one statement on a connection (default :func:`fetch_dicts`); a vendor may pass its own,
        for example to give a statement a job id that stays the same across retries.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        classify: Classifier,
        what: str,
        conn_id: str | None,
        needs: str,
        connection: Any = None,
        policy: RetryPolicy | None = None,
        wait_hint: Callable[[BaseException], float | None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        fetch: Callable[[Any, str, Any], list[dict[str, Any]]] = fetch_dicts,
    ) -> None:
        self._connect = connect
        self._fetch = fetch
        self.classify = classify
        self.what = what
        self.conn_id = conn_id
        self.needs = needs
        self.conn: Any = connection
        self._owned = connection is None
        self.policy = policy or RetryPolicy(max_attempts=6, base_s=0.5, cap_s=10.0, budget_s=120.0)
        self.wait_hint = wait_hint
        self.sleep = sleep
        self.attempts = 0  # statements sent, retries included

    def _drop(self) -> None:
        if self._owned and self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # the connection is already broken; closing is best effort
                log.debug("%s: closing a failed connection raised", self.what, exc_info=True)
            self.conn = None

    def rows(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Run one read statement; rows as dicts keyed by lower-cased column names.

        :raises CredentialsError: the source refused the connection's credentials (not retried).
        :raises RetryExhaustedError: the source kept throttling, failing or timing out past the retry budget.
        """

        def once() -> list[dict[str, Any]]:
            self.attempts += 1
            try:
                if self.conn is None:
                    self.conn = self._connect()
                return self._fetch(self.conn, sql, params)
            except Exception as e:
                if self.classify(e) is Fault.RETRY:
                    self._drop()
                raise

        try:
            return call_with_retry(
                once,
                what=self.what,
                is_retryable=lambda e: self.classify(e) is Fault.RETRY,
                policy=self.policy,
                wait_hint=self.wait_hint,
                sleep=self.sleep,
            )
        except Exception as e:
            if self.classify(e) is not Fault.CREDENTIALS:
                raise
            self._drop()
            raise CredentialsError(
                f"{self.what}: the credentials of connection {self.conn_id!r} were refused "
                f"({error_code(e)}); renew or fix that connection's credentials (it needs {self.needs})"
            ) from None  # the connector's message can echo the user or the token: it is not chained
