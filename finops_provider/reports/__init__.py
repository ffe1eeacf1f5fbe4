"""Renderers of the executive summary that need more than the standard library: the self-contained HTML
report with charts (:mod:`.html`) and the Slack digest (:mod:`.digest`). The data comes from
:func:`finops_provider.core.summary.build_summary`; its JSON schema is documented in ``SCHEMA.md`` here."""
