"""Real-time cost streaming: the cost-event schema, the streaming budget/anomaly engine, its sources.

Layout (nothing here imports Airflow; ``confluent_kafka`` is imported only inside the Kafka functions):

* :mod:`.events`   — the versioned JSON cost-event schema: build, encode, decode to a validated
  :class:`~finops_provider.core.records.CostRecord` or a :class:`~.events.DeadLetter` with the reason.
* :mod:`.engine`   — the pure engine: running totals per budget scope and period, breaches through
  :func:`finops_provider.core.budgets.evaluate` (the batch engine's function), streaming EWMA anomalies,
  event-time watermark with allowed lateness, bounded state.
* :mod:`.sources`  — the source interface and the embedded append-only JSONL source (no broker).
* :mod:`.kafka`    — the Kafka source (consumer group, manual commits) and the Kafka publisher.
* :mod:`.runner`   — :class:`~.runner.StreamProcessor`: micro-batches, one ledger transaction per batch,
  exactly-once results, sinks, metrics.
* :mod:`.feed`     — the live feed (breaches, anomalies, totals, lag) read back from the ledger.
* :mod:`.demo`     — :func:`~.demo.run_embedded_demo` used by ``finops demo``.

Submodules are not imported eagerly.
"""
