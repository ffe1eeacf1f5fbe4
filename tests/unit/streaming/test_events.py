"""The cost-event schema: valid events become exact, attributed ledger records; anything else a dead letter."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops_provider.core.money import exact_sum
from finops_provider.streaming.events import (
    DeadLetter,
    EventDecoder,
    StreamEvent,
    cost_event,
    encode,
    event_from_record,
)
from tests.unit.streaming.conftest import T0


def _decode(decoder: EventDecoder, ev: Any) -> StreamEvent | DeadLetter:
    return decoder.decode(ev if isinstance(ev, bytes) else encode(ev))


def test_cost_event_becomes_an_attributed_ledger_record(decoder, make_event) -> None:
    d = _decode(decoder, make_event("12.345", minutes=5, run_id="r1", tags={"env": "prod"}, kind="billed"))
    assert isinstance(d, StreamEvent)
    r = d.record
    assert (r.billed_cost, r.effective_cost, r.billing_currency) == (Decimal("12.345"), Decimal("12.345"), "USD")
    assert r.charge_period_start == T0 + dt.timedelta(minutes=5) == r.charge_period_end
    assert (r.x_dag_id, r.x_task_id, r.x_run_id, r.x_platform) == ("ingest_orders", "load", "r1", "databricks")
    # the config's DAG -> team -> cost-center mapping applies, as for batch rows
    assert (r.x_team, r.x_cost_center) == ("data-eng", "CC-100")
    assert r.tags == {"env": "prod"}
    assert (r.x_line_item_id, r.x_source, r.x_cost_kind) == (d.event_id, "stream", "billed")
    assert d.producer == "test"


def test_usage_is_priced_through_the_rate_card_exactly(decoder, make_event) -> None:
    ev = make_event(None, quantity="307.7", unit="DBU", sku="JOBS_COMPUTE")
    d = _decode(decoder, ev)
    assert isinstance(d, StreamEvent)
    assert d.record.billed_cost == Decimal("40.001")  # 307.7 DBU x 0.13 (the config's negotiated price)
    assert (d.record.pricing_quantity, d.record.pricing_unit, d.record.list_unit_price) == (
        Decimal("307.7"),
        "DBU",
        Decimal("0.13"),
    )


def test_credit_keeps_its_sign_and_is_a_credit_charge(decoder, make_event) -> None:
    d = _decode(decoder, make_event("-7.25"))
    assert isinstance(d, StreamEvent)
    assert d.record.billed_cost == Decimal("-7.25")
    assert d.record.charge_category == "Credit"


def test_json_numbers_are_decimals_never_floats(decoder, make_event) -> None:
    raw = encode(make_event()).replace(b'"amount":"1.00"', b'"amount":0.1')
    other = encode(make_event()).replace(b'"amount":"1.00"', b'"amount":0.2')
    a, b = _decode(decoder, raw), _decode(decoder, other)
    assert isinstance(a, StreamEvent) and isinstance(b, StreamEvent)
    assert exact_sum([a.record.billed_cost, b.record.billed_cost]) == Decimal("0.3")


def test_record_round_trips_through_an_event(decoder, make_event) -> None:
    first = _decode(decoder, make_event("3.5", run_id="r9", tags={"k": "v"}))
    assert isinstance(first, StreamEvent)
    again = _decode(decoder, event_from_record(first.record, source="callbacks"))
    assert isinstance(again, StreamEvent)
    assert again.record.fingerprints() == first.record.fingerprints()


def _mutate(make_event: Any, **changes: Any) -> dict[str, Any]:
    ev = make_event()
    for k, v in changes.items():
        if v is ...:
            ev.pop(k, None)
        else:
            ev[k] = v
    return ev


BAD: list[Any] = [
    pytest.param(lambda m: b"{not json", "payload", "not valid JSON", id="not-json"),
    pytest.param(lambda m: b"\xff\xfe garbage", "payload", "UTF-8", id="not-utf8"),
    pytest.param(lambda m: b"[1, 2]", "payload", "JSON object", id="not-an-object"),
    pytest.param(lambda m: b"[" * 100_00 + b"]" * 100_00, "payload", "", id="deeply-nested"),
    pytest.param(lambda m: _mutate(m, schema_version=2), "schema_version", "not supported", id="future-version"),
    pytest.param(lambda m: _mutate(m, schema_version=True), "schema_version", "not supported", id="bool-version"),
    pytest.param(lambda m: _mutate(m, schema_version=...), "schema_version", "not supported", id="no-version"),
    pytest.param(lambda m: _mutate(m, event_id=...), "event_id", "missing", id="no-event-id"),
    pytest.param(lambda m: _mutate(m, event_id="x" * 201), "event_id", "longer", id="long-event-id"),
    pytest.param(lambda m: _mutate(m, event_id=42), "event_id", "string", id="numeric-event-id"),
    pytest.param(lambda m: _mutate(m, source=...), "source", "missing", id="no-source"),
    pytest.param(lambda m: _mutate(m, event_time="yesterday"), "event_time", "ISO 8601", id="bad-time"),
    pytest.param(lambda m: _mutate(m, event_time=...), "event_time", "missing", id="no-time"),
    pytest.param(lambda m: _mutate(m, event_time="2030-01-01T00:00:00Z"), "event_time", "future", id="future-time"),
    pytest.param(lambda m: _mutate(m, end_time="2026-10-01T00:00:00Z"), "end_time", "before", id="end-before-start"),
    pytest.param(lambda m: _mutate(m, kind="guess"), "kind", "not one of", id="bad-kind"),
    pytest.param(lambda m: _mutate(m, cost={"amount": "1", "currency": "ZZZ"}), "cost.currency", "ISO", id="bad-cur"),
    pytest.param(lambda m: _mutate(m, cost={"amount": "1"}), "cost.currency", "missing", id="no-currency"),
    pytest.param(
        lambda m: _mutate(m, cost={"amount": "abc", "currency": "USD"}), "cost.amount", "not a number", id="nan-text"
    ),
    pytest.param(lambda m: _mutate(m, cost={"amount": "NaN", "currency": "USD"}), "cost.amount", "finite", id="nan"),
    pytest.param(lambda m: _mutate(m, cost={"amount": "1e30", "currency": "USD"}), "cost.amount", "range", id="huge"),
    pytest.param(
        lambda m: _mutate(m, cost={"amount": "0.00000000000000001", "currency": "USD"}),
        "cost.amount",
        "decimal places",
        id="too-precise",
    ),
    pytest.param(lambda m: _mutate(m, cost={"currency": "USD"}), "cost.amount", "missing", id="no-amount"),
    pytest.param(lambda m: _mutate(m, cost=...), "cost", "missing", id="no-cost-no-usage"),
    pytest.param(lambda m: _mutate(m, cost="12"), "cost", "object", id="cost-not-object"),
    pytest.param(
        lambda m: _mutate(m, cost=..., usage={"quantity": "1", "unit": "DBU", "sku": "NOPE"}),
        "usage.sku",
        "no price",
        id="unknown-sku",
    ),
    pytest.param(
        lambda m: _mutate(m, cost=..., usage={"quantity": "1", "unit": "hour", "sku": "JOBS_COMPUTE"}),
        "usage.unit",
        "does not match",
        id="unit-mismatch",
    ),
    pytest.param(
        lambda m: _mutate(m, cost=..., platform=..., usage={"quantity": "1", "unit": "DBU", "sku": "JOBS_COMPUTE"}),
        "platform",
        "missing",
        id="usage-without-platform",
    ),
    pytest.param(lambda m: _mutate(m, attribution={"tags": ["a"]}), "attribution.tags", "object", id="tags-list"),
    pytest.param(lambda m: _mutate(m, attribution="team-a"), "attribution", "object", id="attribution-text"),
    pytest.param(lambda m: b'{"schema_version": 1, "cost": {"amount": NaN}}', "payload", "finite", id="json-nan"),
]


@pytest.mark.parametrize(("build", "field", "reason"), BAD)
def test_bad_events_become_dead_letters_naming_the_field(decoder, make_event, build, field, reason) -> None:
    d = _decode(decoder, build(make_event))
    assert isinstance(d, DeadLetter), d
    assert d.field == field
    assert reason in d.reason
    assert len(d.raw) <= 4096


def test_oversized_payload_is_dead_lettered_unread(decoder, make_event) -> None:
    ev = make_event(tags={f"k{i}": "v" * 1000 for i in range(100)})
    d = decoder.decode(encode(ev), "t:0:7")
    assert isinstance(d, DeadLetter)
    assert (d.field, d.position) == ("payload", "t:0:7")
    assert "bytes is more than" in d.reason
    assert d.size == len(encode(ev))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_decoder_never_raises_on_arbitrary_bytes(decoder, raw: bytes) -> None:
    assert isinstance(decoder.decode(raw), DeadLetter | StreamEvent)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.dictionaries(
        st.sampled_from(
            ["schema_version", "event_id", "event_time", "source", "cost", "usage", "attribution", "kind", "end_time"]
        ),
        _json,
    )
)
def test_decoder_never_raises_on_arbitrary_json_objects(decoder, make_event, fields) -> None:
    ev = make_event()
    ev.update(fields)
    assert isinstance(decoder.decode(json.dumps(ev).encode()), DeadLetter | StreamEvent)


def test_cost_event_rejects_non_finite_amounts() -> None:
    with pytest.raises(ValueError, match="finite"):
        cost_event(event_id="x", event_time=T0, source="s", amount=float("inf"))


# ---------------------------------------------------------------- templates (the decoder's per-shape cache)
def _outcome(d: StreamEvent | DeadLetter) -> tuple[Any, ...]:
    """Everything a decode result says, with Decimals as text (1 == 1.00 would hide a changed exponent)."""
    if isinstance(d, DeadLetter):
        return ("dead", d.field, d.reason)
    rec = {k: str(v) if isinstance(v, Decimal) else v for k, v in dataclasses.asdict(d.record).items()}
    return ("event", rec, d.producer, d.event_id, d.time_text)


_values = st.none() | st.booleans() | st.integers(-2, 2) | st.sampled_from(["", "x", "1", "USD", "usd", "DBU", "-1"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tags=st.none() | st.dictionaries(st.sampled_from(["env", "team"]), _values, max_size=2),
    changes=st.dictionaries(
        st.sampled_from(["kind", "platform", "service", "currency", "amount", "dag_id", "team", "tags", "unit", "qty"]),
        _values
        | st.dictionaries(st.sampled_from(["env", "team"]), _values, max_size=2)
        | st.lists(_values, max_size=1),
        max_size=3,
    ),
)
def test_a_cached_template_gives_the_record_or_error_a_fresh_decoder_gives(
    config, make_event, tags: dict[str, Any] | None, changes: dict[str, Any]
) -> None:
    """The first event of a shape is checked in full and cached; a later event of that shape with other ids,
    times, amounts, or any field changed to a value of another JSON type (1, 1.0, true, "1"), must decode to
    exactly what a decoder that never saw the first one decodes."""
    clock = lambda: T0 + dt.timedelta(days=365)  # noqa: E731
    warm = EventDecoder(config, clock=clock)
    first = make_event("2.50", platform="databricks", quantity="3", unit="DBU", sku="JOBS")
    if tags is not None:
        first["attribution"]["tags"] = tags
    warm.decode(encode(first))
    probe = json.loads(json.dumps(first))
    probe["event_id"], probe["event_time"] = "other-id", "2026-10-24T11:00:00.000250Z"
    probe["cost"]["amount"] = "-7.125"
    for k, v in changes.items():
        if k in ("kind", "platform", "service"):
            probe[k] = v
        elif k == "currency":
            probe["cost"]["currency"] = v
        elif k == "amount":
            probe["cost"]["amount"] = v
        elif k == "unit":
            probe["usage"]["unit"] = v
        elif k == "qty":
            probe["usage"]["quantity"] = v
        else:
            probe["attribution"][k] = v
    raw = json.dumps(probe).encode()
    assert _outcome(warm.decode(raw)) == _outcome(EventDecoder(config, clock=clock).decode(raw))


def test_events_of_one_shape_share_a_template_and_its_fold_group(decoder, make_event) -> None:
    from finops_provider.streaming.fold import group_part

    events = [decoder.decode(encode(make_event(a, tags={"env": "prod"}))) for a in ("1.00", "2.00", "-0.50")]
    assert len(decoder._templates) == 1
    for e in events:
        assert isinstance(e, StreamEvent)
        assert e.group == group_part(e.record)  # what the folder would compute from the record itself
    assert [e.record.charge_category for e in events] == ["Usage", "Usage", "Credit"]  # type: ignore[union-attr]
    assert events[0].record.tags is not events[1].record.tags  # type: ignore[union-attr]


@given(t=st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2200, 1, 1)))
def test_time_text_of_a_canonical_time_is_the_ledger_text_of_its_datetime(t: dt.datetime) -> None:
    from finops_provider.core.ledger import _sqlite_time, sqlite_time_text
    from finops_provider.core.records import is_canonical_time, parse_time

    text = t.isoformat() + "Z"  # 20 characters without microseconds, 27 with
    assert is_canonical_time(text)
    assert sqlite_time_text(text) == _sqlite_time(parse_time(text, "event_time"))


@pytest.mark.parametrize(
    "text",
    ["2026-W41-5T00:00:00.000000Z", "2026-10-10T00:00:00,000100Z", "2026-10-10T00:00:00+00:00", "20261010T000000Z"],
)
def test_other_time_forms_have_no_time_text(text: str) -> None:
    from finops_provider.core.records import is_canonical_time

    assert not is_canonical_time(text)
    ev = EventDecoder().decode(encode(cost_event(event_id="x", event_time=text, source="s", amount="1")))
    assert isinstance(ev, StreamEvent)  # a valid time all the same (a week date, a comma, an offset, basic form)
    assert ev.time_text is None  # so its ledger text comes from the parsed datetime, not from slicing the text


def test_a_template_varies_no_fold_key_column_but_the_charge_category() -> None:
    """The template path overwrites these fields per event and reuses its two fold groups (usage, credit): every
    other column of the fold key must come from the template, or events of one shape would share a wrong line."""
    from finops_provider.streaming.events import _FIELDS, _PER_EVENT
    from finops_provider.streaming.fold import _KEY_ATTRS

    assert _PER_EVENT <= set(_FIELDS)
    assert set(_KEY_ATTRS) & _PER_EVENT == {"charge_category"}
