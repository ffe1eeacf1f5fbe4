"""The ledger connection: where the FinOps cost ledger lives (PostgreSQL in production, SQLite by default)."""

from __future__ import annotations

from typing import Any

from airflow.sdk.bases.hook import BaseHook

from finops_provider.core.ledger import Ledger, redact_url


class FinOpsLedgerHook(BaseHook):
    """Opens the FinOps ledger from an Airflow connection.

    The connection is either a full SQLAlchemy URL in ``extra.url`` or host/login/password/schema
    (PostgreSQL). ``conn_type`` ``finops_ledger``; a plain ``postgres`` connection works too.

    :param finops_ledger_conn_id: connection id (default ``finops_ledger_default``).
    """

    conn_name_attr = "finops_ledger_conn_id"
    default_conn_name = "finops_ledger_default"
    conn_type = "finops_ledger"
    hook_name = "FinOps ledger"

    def __init__(self, *, finops_ledger_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.finops_ledger_conn_id = finops_ledger_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden_fields": [],
            "relabeling": {"schema": "Database"},
            "placeholders": {
                "extra": '{"url": "postgresql+psycopg://user:pass@host:5432/finops"}',
                "host": "postgres.internal",
                "schema": "finops",
            },
        }

    def get_url(self) -> str:
        conn = self.get_connection(self.finops_ledger_conn_id)
        extra = conn.extra_dejson or {}
        if extra.get("url"):
            return str(extra["url"])
        import sqlalchemy as sa

        return sa.engine.URL.create(
            "postgresql+psycopg",
            username=conn.login or None,
            password=conn.password or None,
            host=conn.host or None,
            port=conn.port or None,
            database=conn.schema or None,
        ).render_as_string(hide_password=False)

    def get_conn(self) -> Ledger:
        return Ledger(self.get_url())

    def test_connection(self) -> tuple[bool, str]:
        try:
            url = self.get_url()
            with Ledger(url, migrate=False) as ledger:
                with ledger.engine.connect():
                    pass
            return True, f"connected to {redact_url(url)}"
        except Exception as e:
            return False, f"{type(e).__name__}: {str(e)[:200]}"
