"""Bad input never crashes a run: FOCUS files, stream events and config files with random and adversarial values.

Each bad row / event is quarantined (dead-lettered) with a reason naming the field, every valid one lands, and
the totals of the valid ones are exact. Identical rows in one export are separate charges; re-ingesting the
export adds nothing. Hypothesis drives the mixes; ``-m long`` runs many more examples and the 10 M sum.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finops_provider.core.config import ConfigError, FinOpsConfig, load_config
from finops_provider.core.focus import read_focus
from finops_provider.core.ledger import Ledger
from finops_provider.core.money import MoneyBag, exact_sum
from finops_provider.streaming.engine import StreamEngine
from finops_provider.streaming.events import EventDecoder, cost_event
from finops_provider.streaming.feed import dead_letters, stream_events
from finops_provider.streaming.runner import StreamProcessor
from finops_provider.streaming.sources import JsonlPublisher, JsonlSource

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
LONG = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
T0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)

# ------------------------------------------------------------------------------------------ FOCUS files
HEADER = [
    "BilledCost",
    "EffectiveCost",
    "BillingCurrency",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ServiceName",
    "ProviderName",
    "Tags",
    "x_DagId",
    "x_Source",
]

#: (name, column the quarantine must name, mutation of a valid row; bytes values are written raw)
MUTATIONS: list[tuple[str, str, Any]] = [
    ("nan", "BilledCost", {"BilledCost": "NaN"}),
    ("inf", "BilledCost", {"BilledCost": "-Infinity"}),
    ("exponent", "BilledCost", {"BilledCost": "1e999"}),
    ("30-digit", "BilledCost", {"BilledCost": "123456789012345678901234567890"}),
    ("17-decimals", "EffectiveCost", {"EffectiveCost": "0.00000000000000001"}),
    ("empty-cost", "BilledCost", {"BilledCost": ""}),
    ("wrong-type", "BilledCost", {"BilledCost": "twelve"}),
    ("unknown-currency", "BillingCurrency", {"BillingCurrency": "ZZZ"}),
    ("empty-currency", "BillingCurrency", {"BillingCurrency": ""}),
    ("bad-tz", "ChargePeriodStart", {"ChargePeriodStart": "2026-03-01T00:00:00+25:00"}),
    ("named-tz", "ChargePeriodEnd", {"ChargePeriodEnd": "2026-03-01 01:00 Europe/Paris"}),
    ("end-before-start", "ChargePeriodEnd", {"ChargePeriodEnd": "2026-02-28T23:00:00Z"}),
    ("huge-tags", "Tags", {"Tags": json.dumps({f"k{i}": "v" for i in range(500)})}),
    ("tags-not-object", "Tags", {"Tags": "[1, 2]"}),
    ("tags-bad-json", "Tags", {"Tags": '{"team": '}),
    ("invalid-utf8", "ServiceName", {"ServiceName": b"Amazon \xff\xfe EC2"}),
    ("invalid-utf8-tags", "Tags", {"Tags": b'{"team": "d\xc3\x28ta"}'}),
]

amounts = st.builds(lambda i, scale: Decimal(i).scaleb(-scale), st.integers(-(10**20), 10**20), st.integers(0, 16))
valid_rows = st.builds(
    lambda cost, eff, cur, minutes, service, tags, dag: {
        "BilledCost": format(cost, "f"),
        "EffectiveCost": format(eff, "f"),
        "BillingCurrency": cur,
        "ChargePeriodStart": (T0 + dt.timedelta(minutes=minutes)).isoformat(),
        "ChargePeriodEnd": (T0 + dt.timedelta(minutes=minutes + 60)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ServiceName": service,
        "ProviderName": "AWS",
        "Tags": json.dumps(tags, ensure_ascii=False),
        "x_DagId": dag,
    },
    amounts,
    amounts,
    st.sampled_from(["USD", "EUR", "JPY", "usd"]),
    st.integers(0, 60 * 24 * 60),
    st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and "\x00" not in s),
    st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=5),
    st.sampled_from(["etl", "it's; DROP TABLE x; --", "ünïcødé", 'a"b']),
)
#: a file: valid rows, some of them repeated verbatim, and bad rows (index into MUTATIONS)
exports = st.tuples(
    st.lists(valid_rows, min_size=1, max_size=25),
    st.lists(st.integers(0, 24), max_size=5),
    st.lists(st.tuples(st.integers(0, len(MUTATIONS) - 1), st.integers(0, 24)), max_size=12),
)


def _write_export(path: Path, rows: list[dict[str, Any]]) -> None:
    """CSV bytes; a bytes value is written as-is (invalid UTF-8 reaches the reader untouched)."""
    buf = io.BytesIO()
    buf.write((",".join(HEADER) + "\r\n").encode())
    for row in rows:
        cells = []
        for h in HEADER:
            v = row[h]
            if isinstance(v, bytes):
                cells.append(b'"' + v.replace(b'"', b'""') + b'"')
            else:
                s = io.StringIO()
                csv.writer(s).writerow([v])
                cells.append(s.getvalue().rstrip("\r\n").encode("utf-8"))
        buf.write(b",".join(cells) + b"\r\n")
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def shared_ledger(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Ledger(f"sqlite:///{tmp_path_factory.mktemp('bad-input') / 'ledger.db'}") as led:
        yield led


def _check_export(led: Ledger, tmp: Path, export: tuple[Any, ...], figures: Any) -> None:
    valid, repeats, bads = export
    source = f"fuzz-{uuid.uuid4().hex[:10]}"  # the rows' x_Source: each example is its own collection
    good = [{**r, "x_Source": source} for r in [*valid, *[valid[i % len(valid)] for i in repeats]]]
    rows = list(good)
    expected_bad: list[str] = []
    for m, at in bads:
        name, field, change = MUTATIONS[m]
        rows.insert(at % (len(rows) + 1), {**good[at % len(good)], **change})
        expected_bad.append(field)
        figures.bad_input(f"focus:{name}")
    path = tmp / f"{source}.csv"
    _write_export(path, rows)
    res = led.ingest(read_focus(path), source=source)
    quarantined = led.quarantined(res.batch_id)
    # every bad row is quarantined naming its column; every valid row (identical duplicates included) lands
    assert sorted(q["field"] for q in quarantined) == sorted(expected_bad), [
        (q["field"], q["reason"]) for q in quarantined
    ]
    assert all(q["reason"] and q["row_number"] >= 1 for q in quarantined)
    stored = led.count(source=source)
    figures.checked(valid=len(good), lost=len(good) - stored, duplicates=stored - len(good))
    assert stored == res.inserted == len(good)
    expected = MoneyBag()
    for r in good:
        expected.add_raw(Decimal(r["BilledCost"]), r["BillingCurrency"].upper())
    assert led.totals(source=source) == expected
    # the same export again: nothing added, nothing restated
    again = led.ingest(read_focus(path), source=source)
    assert (again.inserted, again.restated, again.unchanged) == (0, 0, len(good))
    assert led.count(source=source) == len(good)


@FAST
@given(export=exports)
def test_focus_exports_quarantine_bad_rows_and_land_the_rest(shared_ledger, tmp_path, figures, export) -> None:
    _check_export(shared_ledger, tmp_path, export, figures)


@pytest.mark.long
@LONG
@given(export=exports)
def test_focus_exports_fuzz_long(shared_ledger, tmp_path, figures, export) -> None:
    _check_export(shared_ledger, tmp_path, export, figures)


# ------------------------------------------------------------------------------------------ stream events
def _event(i: int, amount: str, **kw: Any) -> dict[str, Any]:
    return cost_event(
        event_id=f"ev-{i}",
        event_time=T0 + dt.timedelta(minutes=i),
        source="fuzz",
        amount=amount,
        currency=kw.pop("currency", "USD"),
        dag_id=kw.pop("dag_id", "ingest_orders"),
        task_id="load",
        **kw,
    )


def _mutate(ev: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(ev))
    for path, v in changes.items():
        node = out
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return out


#: (name, dead-letter field, raw message built from a valid event)
BAD_EVENTS: list[tuple[str, str, Any]] = [
    ("nan", "payload", lambda ev: json.dumps(ev).replace(json.dumps(ev["cost"]["amount"]), "NaN").encode()),
    ("inf-text", "cost.amount", lambda ev: json.dumps(_mutate(ev, cost__amount="Infinity")).encode()),
    ("exponent", "cost.amount", lambda ev: json.dumps(_mutate(ev, cost__amount="1e999")).encode()),
    ("30-digit", "cost.amount", lambda ev: json.dumps(_mutate(ev, cost__amount="9" * 30)).encode()),
    ("empty-amount", "cost.amount", lambda ev: json.dumps(_mutate(ev, cost__amount="")).encode()),
    ("wrong-type", "cost.amount", lambda ev: json.dumps(_mutate(ev, cost__amount=[1])).encode()),
    ("unknown-currency", "cost.currency", lambda ev: json.dumps(_mutate(ev, cost__currency="XBT")).encode()),
    ("bad-time", "event_time", lambda ev: json.dumps(_mutate(ev, event_time="2026-10-10T25:00:00Z")).encode()),
    ("end-before-start", "end_time", lambda ev: json.dumps(_mutate(ev, end_time="2000-01-01T00:00:00Z")).encode()),
    ("invalid-utf8", "payload", lambda ev: json.dumps(ev).encode().replace(b"ingest_orders", b"ingest\xff\xfe")),
    ("lone-surrogate", "dag_id", lambda ev: json.dumps(ev).replace("ingest_orders", "\\udcff").encode()),
    (
        "huge-tags",
        "attribution.tags",
        lambda ev: json.dumps(_mutate(ev, attribution__tags={f"k{i}": "v" * 50 for i in range(400)})).encode(),
    ),
    ("not-json", "payload", lambda ev: b'{"schema_version": 1, "event_id": '),
    ("schema-version", "schema_version", lambda ev: json.dumps(_mutate(ev, schema_version="1")).encode()),
]

event_mixes = st.tuples(
    st.lists(
        st.builds(lambda i, s: Decimal(i).scaleb(-s), st.integers(-(10**12), 10**12), st.integers(0, 16)),
        min_size=1,
        max_size=30,
    ),
    st.lists(st.tuples(st.integers(0, len(BAD_EVENTS) - 1), st.integers(0, 40)), max_size=10),
    st.lists(st.integers(0, 40), max_size=4),  # redeliveries of valid events
)


def _check_stream(tmp: Path, mix: tuple[Any, ...], figures: Any) -> None:
    valid_amounts, bads, redeliver = mix
    valid = [_event(i, format(a, "f")) for i, a in enumerate(valid_amounts)]
    messages: list[bytes] = [json.dumps(ev).encode() for ev in valid]
    messages += [json.dumps(valid[k % len(valid)]).encode() for k in redeliver]
    expected_fields = []
    for m, at in bads:
        name, field, build = BAD_EVENTS[m]
        bad = build(_mutate(valid[at % len(valid)], event_id=f"bad-{len(expected_fields)}"))
        messages.insert(at % (len(messages) + 1), bad)
        expected_fields.append(field)
        figures.bad_input(f"event:{name}")
    path = tmp / f"{uuid.uuid4().hex}.jsonl"
    pub = JsonlPublisher(path)
    for raw in messages:
        pub.publish_raw(raw)
    pub.close()
    cfg = FinOpsConfig()
    with Ledger(f"sqlite:///{tmp / (path.stem + '.db')}") as led:
        p = StreamProcessor(
            led,
            JsonlSource(path),
            StreamEngine.from_config(cfg),
            decoder=EventDecoder(cfg, clock=lambda: T0 + dt.timedelta(days=365)),
            consumer="fuzz",
            max_batch=7,
            poll_timeout=0.01,
        )
        p.start()
        while p.run_once().messages:
            pass
        p.close()
        events = stream_events(led)
        stored = events["events"]
        letters = dead_letters(led, limit=1000)
        total = led.totals()
    figures.checked(valid=len(valid), lost=len(valid) - stored, duplicates=stored - len(valid))
    assert sorted(d["field"] for d in letters) == sorted(expected_fields), [(d["field"], d["reason"]) for d in letters]
    assert stored == len(valid) and events["unfolded"] == 0
    assert total.get("USD").amount == exact_sum(valid_amounts)


@pytest.mark.parametrize("case", [pytest.param(i, id=b[0]) for i, b in enumerate(BAD_EVENTS)])
def test_each_bad_event_is_dead_lettered_naming_its_field(case: int, tmp_path, figures) -> None:
    _check_stream(tmp_path, ([Decimal("1.5"), Decimal("-0.25")], [(case, 1)], []), figures)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(mix=event_mixes)
def test_stream_mixes_keep_every_valid_event_exactly(tmp_path, figures, mix) -> None:
    _check_stream(tmp_path, mix, figures)


@pytest.mark.long
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(mix=event_mixes)
def test_stream_mixes_fuzz_long(tmp_path, figures, mix) -> None:
    _check_stream(tmp_path, mix, figures)


# ------------------------------------------------------------------------------------------ config files
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
config_docs = st.fixed_dictionaries(
    {},
    optional={
        "currency": yaml_values | st.sampled_from(["USD", "ZZZ", ""]),
        "budgets": st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.text(max_size=10),
                    "scope": yaml_values,
                    "amount": yaml_values | st.sampled_from(["NaN", "1e999", "-1", "12.5"]),
                },
                optional={"period": yaml_values, "thresholds": yaml_values, "currency": yaml_values},
            ),
            max_size=3,
        ),
        "teams": yaml_values,
        "dags": yaml_values,
        "anomaly": yaml_values,
        "rate_cards": yaml_values,
        "notifications": yaml_values,
        "ledger": yaml_values,
        "unknown_key": yaml_values,
    },
)
HOSTILE_YAML = [
    pytest.param("!!python/object/apply:os.system ['touch {marker}']", id="python-apply"),
    pytest.param("budgets: !!python/object/new:subprocess.Popen [['touch', '{marker}']]", id="python-new"),
    pytest.param("currency: !!python/name:os.system", id="python-name"),
    pytest.param("a: &a [*a, *a, *a]\n", id="recursive-alias"),
    pytest.param(
        "a: &a ['x','x','x','x','x','x','x','x']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b]\n",
        id="billion-laughs-small",
    ),
    pytest.param("\x00\x01 budgets: [", id="control-chars"),
]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(doc=config_docs)
def test_random_config_files_load_or_fail_with_a_config_error(tmp_path, figures, doc) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    figures.bad_input("config:random")
    try:
        cfg = load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)  # every error names the file
    else:
        assert isinstance(cfg, FinOpsConfig)


@pytest.mark.parametrize("text", HOSTILE_YAML)
def test_hostile_yaml_never_executes(text: str, tmp_path, figures) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "config.yaml"
    path.write_text(text.format(marker=marker), encoding="utf-8")
    figures.bad_input("config:hostile-yaml")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ exact sums
def _tiny_sum(n: int) -> None:
    """n tiny amounts (1e-16 .. 9.999e-13, the ledger's finest scale) sum exactly: compared with integer maths."""
    bag = MoneyBag()
    units = 0
    for i in range(n):
        u = (i * 2_654_435_761) % 9_999 + 1  # deterministic, varied
        units += u
        bag.add_raw(Decimal(u).scaleb(-16), "USD")
    assert bag.get("USD").amount == Decimal(units).scaleb(-16)
    assert exact_sum(Decimal(u).scaleb(-16) for u in (1,) * 10) == Decimal("1E-15")


def test_a_million_tiny_amounts_sum_exactly(figures) -> None:
    _tiny_sum(1_000_000)
    figures.amounts_summed += 1_000_000


@pytest.mark.long
def test_ten_million_tiny_amounts_sum_exactly(figures) -> None:
    _tiny_sum(10_000_000)
    figures.amounts_summed += 10_000_000
