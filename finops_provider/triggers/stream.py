"""Fire when the streaming engine writes a breach (or anomaly) to the live feed — for event-driven DAGs.

:class:`StreamFeedTrigger` is a ``BaseEventTrigger``: put it in an ``AssetWatcher`` and a DAG scheduled on
that asset starts when a breach appears (Airflow 3 event-driven scheduling); it also works as a deferrable
trigger of an operator. It reads the ledger's ``finops_stream_feed`` table (written in the same transaction
as the stream state that produced the breach) from the triggerer, in a thread, every ``poll_interval``
seconds. Delivery is at-least-once (a triggerer restart re-reads from ``after_id``); enforcement actions
are keyed by the breach ``dedupe_key`` (breach claims, outbox), so a repeated event does not act twice.

Example::

    from airflow.sdk import Asset, AssetWatcher, dag
    from finops_provider.triggers.stream import StreamFeedTrigger

    breaches = Asset(
        "finops://stream/breaches",
        watchers=[AssetWatcher(name="finops_breaches", trigger=StreamFeedTrigger(budgets=["ml-platform-monthly"]))],
    )

    @dag(schedule=[breaches])
    def enforce_on_breach(): ...  # the triggering event's ``payload`` is ``Breach.to_json()``
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent


def feed_after(
    after_id: int, *, kinds: list[str], budgets: list[str] | None, ledger_url: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    """Feed items after ``after_id`` (runs in a worker thread of the triggerer)."""
    from finops_provider.core.ledger import Ledger
    from finops_provider.settings import ledger_url as resolve_url
    from finops_provider.streaming.feed import read_feed

    with Ledger(resolve_url(ledger_url), migrate=False) as ledger:
        return read_feed(ledger, after_id=after_id, kinds=kinds, budgets=budgets, limit=limit)


class StreamFeedTrigger(BaseEventTrigger):
    """Yields one event per new feed item (``{"status": "breach"|"anomaly", "id", "dedupe_key", "payload"}``).

    :param kinds: feed kinds to fire on (default breaches only).
    :param budgets: only breaches of these budgets (default all).
    :param after_id: fire for feed items with a larger id (the feed id is monotonic).
    :param poll_interval: seconds between ledger reads.
    :param ledger_url: ledger URL (default: the provider's ledger resolution: env, config, connection).
    :param once: stop after the first event (deferrable-operator use) instead of watching forever.
    """

    def __init__(
        self,
        kinds: list[str] | None = None,
        budgets: list[str] | None = None,
        after_id: int = 0,
        poll_interval: float = 5.0,
        ledger_url: str | None = None,
        once: bool = False,
    ) -> None:
        super().__init__()
        self.kinds = list(kinds or ["breach"])
        self.budgets = list(budgets) if budgets is not None else None
        self.after_id = int(after_id)
        self.poll_interval = float(poll_interval)
        self.ledger_url = ledger_url
        self.once = bool(once)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "finops_provider.triggers.stream.StreamFeedTrigger",
            {
                "kinds": self.kinds,
                "budgets": self.budgets,
                "after_id": self.after_id,
                "poll_interval": self.poll_interval,
                "ledger_url": self.ledger_url,
                "once": self.once,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        cursor = self.after_id
        while True:
            try:
                items = await asyncio.to_thread(
                    feed_after, cursor, kinds=self.kinds, budgets=self.budgets, ledger_url=self.ledger_url
                )
            except Exception as e:  # the ledger is unreachable: report, keep watching
                self.log.warning("finops stream feed not readable (%s: %s); retrying", type(e).__name__, e)
                items = []
            for it in items:
                cursor = max(cursor, it["id"])
                yield TriggerEvent(
                    {"status": it["kind"], "id": it["id"], "dedupe_key": it["dedupe_key"], "payload": it["payload"]}
                )
                if self.once:
                    return
            if items:
                continue  # there may be more than one page
            await asyncio.sleep(self.poll_interval)
