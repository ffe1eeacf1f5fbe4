"""The ``finops`` command: demo, ingest, export, report, collect, validate-config."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from finops_provider.core.config import ConfigError, FinOpsConfig, load_config
from finops_provider.core.money import Money, MoneyBag

app = typer.Typer(
    help="FinOps control plane for data platforms.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a traceback's locals would print ledger URLs (passwords) and tokens
)
console = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="config.yaml (default: FINOPS_CONFIG)")]
LedgerOpt = Annotated[
    str | None, typer.Option("--ledger", help="ledger URL (default: FINOPS_LEDGER_URL or SQLite in FINOPS_HOME)")
]


def _config(path: Path | None) -> FinOpsConfig:
    from finops_provider.settings import get_config

    try:
        return get_config(path)
    except ConfigError as e:
        err.print(f"[red]config error[/red]\n{e}")
        raise typer.Exit(2) from None


def _ledger(url: str | None, cfg: FinOpsConfig) -> Any:
    from finops_provider.settings import get_ledger

    return get_ledger(url, cfg)


def _parse_day(s: str, opt: str) -> dt.datetime:
    try:
        d = dt.date.fromisoformat(s)
    except ValueError:
        err.print(f"[red]{opt}[/red]: {s!r} is not a date; use YYYY-MM-DD")
        raise typer.Exit(2) from None
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def _money_table(title: str, rows: list[dict[str, Any]], key_title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column(key_title)
    t.add_column("Cost", justify="right")
    t.add_column("Share", justify="right")
    for r in rows:
        t.add_row(str(r["key"]), Money.of(r["amount"], r["currency"]).format(), f"{r['share_pct']} %")
    return t


anomalies_app = typer.Typer(help="Cost anomalies: list them, label them (true / false / planned).")
app.add_typer(anomalies_app, name="anomalies")


@anomalies_app.command("list")
def anomalies_list(
    at: Annotated[str | None, typer.Option(help="last day to scan, YYYY-MM-DD (default: yesterday, UTC)")] = None,
    days: Annotated[int, typer.Option(min=1, max=90, help="days back from --at")] = 7,
    dims: Annotated[str, typer.Option(help="comma-separated scope dimensions")] = "team,dag,platform",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Anomalies of the last --days days (the configured detector), with each one's latest label."""
    from rich.markup import escape

    from finops_provider.core.anomaly import RobustDetector, anomaly_labels, detector_from_config

    cfg = _config(config)
    led = _ledger(ledger, cfg)
    day = _parse_day(at, "--at").date() if at else (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date()
    det = detector_from_config(cfg.anomaly)
    scope_dims = tuple(d.strip() for d in dims.split(",") if d.strip())
    if isinstance(det, RobustDetector):
        found = det.scan(led, day, scope_dims, lookback=days)
    else:
        found = [a for i in range(days) for a in det.scan(led, day - dt.timedelta(days=i), scope_dims)]
    labels = {r["dedupe_key"]: r["label"] for r in anomaly_labels(led)}
    rows = [dict(a.to_json(), label=labels.get(a.dedupe_key)) for a in found]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    t = Table(title=f"Anomalies {day - dt.timedelta(days=days - 1)} .. {day}", title_justify="left")
    for c in ("key", "severity", "actual", "expected", "impact", "z", "root cause", "label"):
        t.add_column(c, justify="right" if c in ("actual", "expected", "impact", "z") else "left")
    for a, r in zip(found, rows, strict=True):
        rc = r["root_cause"]
        t.add_row(
            escape(a.dedupe_key),
            f"{a.severity} {a.kind or ''}".strip(),
            a.actual.format(),
            a.expected.format(),
            a.impact.format(),
            r["zscore"] or r["score_pct"] + " %",
            escape(f"{rc['dimension']}={rc['value']}") if rc else "",
            r["label"] or "",
        )
    console.print(t)


@anomalies_app.command("label")
def anomalies_label(
    key: Annotated[str, typer.Argument(help="the anomaly's key, as printed by `finops anomalies list`")],
    label: Annotated[str, typer.Option("--as", help="true, false or planned")],
    until: Annotated[str | None, typer.Option(help="planned: suppress the scope until YYYY-MM-DD")] = None,
    note: Annotated[str | None, typer.Option(help="why")] = None,
    who: Annotated[str | None, typer.Option(help="who labels (default: $USER)")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Label an anomaly; ``planned`` suppresses alerts of its scope until --until (default 7 days)."""
    import getpass

    from finops_provider.core.anomaly import label_anomaly

    led = _ledger(ledger, _config(config))
    try:
        row = label_anomaly(
            led,
            key,
            label,
            note=note,
            who=who or getpass.getuser(),
            until=_parse_day(until, "--until") if until else None,
        )
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    sys.stdout.write(json.dumps(row) + "\n")


def print_summary(summary: dict[str, Any]) -> None:
    """Rich rendering of the executive summary (same data as the Markdown/JSON)."""
    from rich.markup import escape

    p = summary["period"]
    t = Table(title=f"Spend — {p['kind']} {p['start'][:10]} .. {p['end'][:10]}", title_justify="left")
    for c in ("Currency", "Billed", "Effective", "Previous", "Change"):
        t.add_column(c, justify="right" if c != "Currency" else "left")
    for cur, amt in summary["totals"]["billed"].items():
        tr = summary["trend"].get(cur, {})
        t.add_row(
            cur,
            Money.of(amt, cur).format(),
            Money.of(summary["totals"]["effective"].get(cur, "0"), cur).format(),
            Money.of(tr.get("previous", "0"), cur).format(),
            f"{tr['change_pct']} %" if tr.get("change_pct") else "n/a",
        )
    console.print(t)
    for dim, title in (
        ("team", "Team"),
        ("cost_center", "Cost center"),
        ("platform", "Platform"),
        ("dag", "Job (DAG)"),
    ):
        rows = [dict(r, key=escape(str(r["key"]))) for r in summary["breakdowns"][dim][:8]]
        console.print(_money_table(f"Top by {title.lower()}", rows, title))
    if summary["budgets"]:
        bt = Table(title="Budgets", title_justify="left")
        for c in ("Budget", "Period", "Spent", "Budget", "Used", "Forecast", "Breach ETA"):
            bt.add_column(c, justify="right" if c not in ("Budget", "Period", "Breach ETA") else "left")
        for b in summary["budgets"]:
            cur = b["amount"]["currency"]
            used = float(b["utilisation_pct"])
            style = "red" if used >= 100 else "yellow" if used >= 80 else "green"
            bt.add_row(
                escape(b["budget"]),
                b["period"],
                Money.of(b["actual"]["amount"], cur).format(),
                Money.of(b["amount"]["amount"], cur).format(),
                f"[{style}]{b['utilisation_pct']} %[/{style}]",
                f"{b['forecast_pct']} %",
                (b["breach_eta"] or "—")[:16],
            )
        console.print(bt)
    if summary["breaches"]:
        console.print("[bold red]Breaches[/bold red]")
        for br in summary["breaches"]:
            console.print(
                f"  • {escape(br['budget'])}: {br['threshold_pct']} % ({br['basis']}) → {', '.join(br['actions'])}"
            )
    if summary["anomalies"]:
        console.print("[bold yellow]Anomalies[/bold yellow]")
        for a in summary["anomalies"]:
            scope = ", ".join(f"{k}={escape(str(v))}" for k, v in a["scope"].items())
            cur = a["actual"]["currency"]
            rc = a["root_cause"]
            why = f" — driver {rc['dimension']} {escape(rc['value'])}" if rc else ""
            console.print(
                f"  • {a['severity']} {scope}: {Money.of(a['actual']['amount'], cur).format()} vs expected "
                f"{Money.of(a['expected']['amount'], cur).format()} "
                f"(+{Money.of(a['impact']['amount'], cur).format()}){why}"
            )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for summary.md / summary.json")] = Path("demo-output"),
    ledger: LedgerOpt = None,
    resources: Annotated[int, typer.Option(help="hourly cloud resources to simulate (row count driver)")] = 300,
) -> None:
    """Run the whole job offline: a month of costs + the real FOCUS sample, budgets, anomalies, summary."""
    from finops_provider import demo as demo_mod
    from finops_provider.core.allocation import Attributor
    from finops_provider.core.anomaly import detector_from_config
    from finops_provider.core.budgets import BudgetEngine
    from finops_provider.core.focus import read_focus
    from finops_provider.core.ledger import Ledger, finops_home
    from finops_provider.core.pricing import RateCard
    from finops_provider.core.summary import build_summary, render_json, render_markdown

    t0 = time.monotonic()
    cfg = load_config(demo_mod.demo_config_path())
    rc = RateCard.for_config(cfg)
    url = ledger or f"sqlite:///{finops_home() / 'demo' / 'ledger.db'}"
    led = Ledger(url)
    led.reset()
    led.migrate()
    console.print(f"[bold]finops demo[/bold] — ledger {led!r}")
    data = demo_mod.generate(rc, infra_resources=resources)
    console.print(
        f"generated {len(data.records):,} cost rows for {len(demo_mod.DAGS)} DAGs, {len(demo_mod.TEAMS)} teams "
        f"and {resources} cloud resources ({time.monotonic() - t0:.1f}s)"
    )
    attr = Attributor(cfg)
    r1 = led.ingest(attr.apply_all(data.records), source="demo", batch_id="demo-month")
    r2 = led.ingest(attr.apply_all(read_focus(demo_mod.sample_path())), source="focus-sample", batch_id="focus-sample")
    console.print(
        f"ingested {r1.inserted:,} generated rows and {r2.inserted:,} rows of the real FOCUS sample "
        f"(quarantined {r1.quarantined + r2.quarantined}) ({time.monotonic() - t0:.1f}s)"
    )
    expected = data.expected
    for cur, amt in (r2.totals or {}).items():
        expected.add_raw(Money.of(amt, cur).amount, cur)
    stored = led.totals()
    exact = stored == expected
    console.print(
        f"ledger totals {stored.to_json()} — "
        + ("[green]equal to the inputs, to the last digit[/green]" if exact else "[red]MISMATCH[/red]")
    )
    # run-time estimates superseded by billed truth, with each platform's estimate error
    rep = demo_mod.reconcile_demo(led)
    after = MoneyBag()
    after.merge(data.expected_after_reconcile)
    for cur, amt in (r2.totals or {}).items():
        after.add_raw(Money.of(amt, cur).amount, cur)
    reconciled_exact = led.totals() == after
    acc = Table(
        title=f"Estimate accuracy ({rep.superseded_rows} estimates superseded by billed truth)", title_justify="left"
    )
    for c in ("Platform", "Tasks", "Estimated", "Billed", "Bias", "Mean |error|"):
        acc.add_column(c, justify="left" if c == "Platform" else "right")
    for pa in sorted(rep.accuracy.values(), key=lambda x: x.platform):
        acc.add_row(pa.platform, str(pa.tasks), Money(pa.estimate, pa.currency).format(),
                    Money(pa.truth, pa.currency).format(), f"{pa.bias_pct} %",
                    f"{pa.mean_abs_error_pct} %")  # fmt: skip
    console.print(acc)
    now = demo_mod.DEMO_NOW
    engine = BudgetEngine(cfg, led)
    statuses = engine.evaluate_all(now - dt.timedelta(microseconds=1))
    fresh = engine.new_breaches(statuses)
    anomalies = detector_from_config(cfg.anomaly).scan(led, (now - dt.timedelta(days=1)).date())
    # the live path: a burst of cost events through the embedded stream source, breaches found as they happen
    from finops_provider.streaming.demo import run_embedded_demo

    console.print("\n[bold]live stream[/bold] (embedded source, no broker):")
    stream = run_embedded_demo(led, cfg, pace=0.002, max_batch=16)
    for line in stream.log:
        console.print(f"  • {escape_markup(line)}")
    console.print(
        f"  {stream.events} events -> {len(stream.breaches)} breach(es), {len(stream.anomalies)} anomaly(ies); "
        + ("[green]stream totals exact[/green]" if stream.exact else "[red]stream MISMATCH[/red]")
    )
    summary = build_summary(led, cfg, now=now - dt.timedelta(microseconds=1), statuses=statuses, anomalies=anomalies)
    summary["demo"] = {
        "rows_generated": len(data.records),
        "rows_sample": r2.inserted,
        "ledger_exact": exact,
        "reconciled_exact": reconciled_exact,
        "estimates_superseded": rep.superseded_rows,
        "estimate_accuracy": [pa.to_json() for pa in rep.accuracy.values()],
        "new_breaches": len(fresh),
        "stream": {
            "events": stream.events,
            "breaches": [b.dedupe_key for b in stream.breaches],
            "anomalies": [a.dedupe_key for a in stream.anomalies],
            "ledger_total": stream.ledger_total.to_json(),
            "exact": stream.exact,
        },
    }
    print_summary(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(render_markdown(summary), encoding="utf-8")
    (out / "summary.json").write_text(render_json(summary), encoding="utf-8")
    from finops_provider.reports.html import write_demo_html

    html = write_demo_html(summary, out)
    console.print(
        f"\nwrote [bold]{out / 'summary.md'}[/bold], [bold]{out / 'summary.json'}[/bold] and "
        f"[bold]{html}[/bold] (self-contained HTML report with charts) in {time.monotonic() - t0:.1f}s"
    )
    led.close()
    if not (exact and reconciled_exact and stream.exact):
        raise typer.Exit(1)


@app.command()
def ingest(
    path: Path,
    fmt: Annotated[str, typer.Option("--format", help="focus (CSV or Parquet by file name)")] = "focus",
    source: Annotated[str, typer.Option(help="source name recorded with each row")] = "focus-file",
    bulk: Annotated[bool, typer.Option(help="aggregate to day grain in DuckDB first (large exports)")] = False,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Ingest a FOCUS file (CSV or Parquet) into the ledger; bad rows go to quarantine.

    With --bulk the file is aggregated in DuckDB (exact DECIMAL) and only day-grain groups are stored;
    a re-delivered file replaces the days it covers.
    """
    from finops_provider.core.allocation import Attributor
    from finops_provider.core.focus import read_focus
    from finops_provider.core.records import RecordError

    if fmt != "focus":
        err.print(f"[red]--format[/red]: {fmt!r} is not supported; use focus")
        raise typer.Exit(2)
    if not path.is_file():
        err.print(f"[red]{path}[/red]: no such file")
        raise typer.Exit(2)
    cfg = _config(config)
    led = _ledger(ledger, cfg)
    try:
        if bulk:
            from finops_provider.core.bulk import ingest_focus_bulk

            b, res = ingest_focus_bulk(led, [path], cfg, source=source if source != "focus-file" else "focus-bulk")
            err.print(f"aggregated {b.rows_in:,} rows into {len(b.records):,} day-grain groups in {b.seconds:.2f}s")
        else:
            res = led.ingest(Attributor(cfg).apply_all(read_focus(path)), source=source)
    except RecordError as e:
        err.print(f"[red]{path}[/red]: {e}")
        raise typer.Exit(2) from None
    console.print_json(json.dumps(res.to_json()))
    if res.quarantined:
        err.print(
            f"[yellow]{res.quarantined} row(s) quarantined[/yellow]; see `finops quarantine --batch {res.batch_id}`"
        )


@app.command()
def quarantine(
    batch: Annotated[str | None, typer.Option(help="only this batch")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """List quarantined rows with the field and the reason."""
    led = _ledger(ledger, _config(config))
    t = Table("batch", "row", "field", "reason")
    for q in led.quarantined(batch):
        t.add_row(q["batch_id"][:12], str(q["row_number"]), q["field"], q["reason"])
    console.print(t)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="file to write (.csv or .parquet)")],
    fmt: Annotated[str, typer.Option("--format")] = "focus",
    start: Annotated[str | None, typer.Option(help="YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option(help="YYYY-MM-DD (exclusive)")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Export the ledger as FOCUS 1.2 CSV or Parquet."""
    from finops_provider.core.focus import write_focus

    if fmt != "focus":
        err.print(f"[red]--format[/red]: {fmt!r} is not supported; use focus")
        raise typer.Exit(2)
    led = _ledger(ledger, _config(config))
    n = write_focus(
        led.records(
            start=_parse_day(start, "--start") if start else None, end=_parse_day(end, "--end") if end else None
        ),
        out,
    )
    console.print(f"wrote {n:,} rows to {out}")


@app.command()
def report(
    fmt: Annotated[str, typer.Option("--format", help="md, json or html")] = "md",
    period: Annotated[str, typer.Option(help="day, week or month")] = "month",
    at: Annotated[str | None, typer.Option(help="a date inside the period (default: now)")] = None,
    out: Annotated[Path | None, typer.Option(help="write to this file instead of stdout")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Executive summary from the ledger, as Markdown, JSON or a self-contained HTML report with charts."""
    from finops_provider.core.summary import build_summary, render_json, render_markdown

    if fmt not in ("md", "json", "html"):
        err.print(f"[red]--format[/red]: {fmt!r}; use md, json or html")
        raise typer.Exit(2)
    if period not in ("day", "week", "month"):
        err.print(f"[red]--period[/red]: {period!r}; use day, week or month")
        raise typer.Exit(2)
    cfg = _config(config)
    led = _ledger(ledger, cfg)
    now = _parse_day(at, "--at") + dt.timedelta(hours=23, minutes=59) if at else dt.datetime.now(dt.UTC)
    summary = build_summary(led, cfg, now=now, period=period)
    if fmt == "html":
        from finops_provider.reports.html import render_html

        text = render_html(summary)
    else:
        text = render_markdown(summary) if fmt == "md" else render_json(summary)
    if out:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command("validate-config")
def validate_config(path: Path) -> None:
    """Check a config.yaml; errors name the file, the key and the fix."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        err.print(f"[red]invalid[/red]\n{e}")
        raise typer.Exit(2) from None
    from finops_provider.core.pricing import RateCard

    try:
        RateCard.for_config(cfg)
    except ValueError as e:
        err.print(f"[red]invalid[/red]\n{path}: {e}")
        raise typer.Exit(2) from None
    console.print(
        f"[green]ok[/green] {path}: {len(cfg.budgets)} budget(s), {len(cfg.teams)} team(s), "
        f"{len(cfg.dags)} DAG mapping(s)"
    )


@app.command()
def collect(
    source: Annotated[str, typer.Argument(help="a registered source, for example aws")],
    start: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="YYYY-MM-DD (exclusive)")],
    tag_key: Annotated[str | None, typer.Option(help="cost-allocation tag / label that identifies jobs")] = None,
    conn_id: Annotated[str | None, typer.Option(help="Airflow connection id (default: the source's default)")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="source option KEY=VALUE")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Collect costs for a window into the ledger (connections from the usual AIRFLOW_CONN_* variables)."""
    from finops_provider.collect import get_collector

    try:
        collector = get_collector(source)
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    opts: dict[str, Any] = {}
    for o in option or []:
        k, sep, v = o.partition("=")
        if not sep:
            err.print(f"[red]--option[/red] {o!r}: write KEY=VALUE")
            raise typer.Exit(2)
        opts[k.replace("-", "_")] = v
    if tag_key:
        opts["tag_key"] = tag_key
    cfg = _config(config)
    led = _ledger(ledger, cfg)
    res, ing = collector(led, cfg, _parse_day(start, "--start"), _parse_day(end, "--end"), conn_id=conn_id, **opts)
    t = Table("rows", "provisional", "API requests", "totals")
    t.add_row(
        str(len(res.records)),
        str(res.provisional),
        str(res.requests),
        ", ".join(Money.of(a, c).format() for c, a in res.totals().items()) or "0",
    )
    console.print(t)
    console.print(
        f"ledger: {ing.inserted} new, {ing.restated} restated, {ing.unchanged} unchanged, {ing.removed} removed"
    )


@app.command()
def stream(
    source: Annotated[
        str | None,
        typer.Option(help="kafka://HOST:PORT/TOPIC[?group=G] or file:///PATH.jsonl (default: the embedded file)"),
    ] = None,
    consumer: Annotated[str, typer.Option(help="engine name: state, checkpoints and Kafka group id")] = "finops-stream",
    live: Annotated[bool, typer.Option("--live/--no-live", help="rich live view (else one line per event)")] = True,
    sink_jsonl: Annotated[Path | None, typer.Option(help="also append breaches/anomalies to this JSONL file")] = None,
    lateness: Annotated[float, typer.Option(help="allowed lateness in minutes (older events: ledger only)")] = 60,
    max_batch: Annotated[int, typer.Option(help="messages per micro-batch (one ledger transaction each)")] = 2000,
    idle_exit: Annotated[float | None, typer.Option(help="stop after this many idle seconds (default: never)")] = None,
    config: ConfigOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Run the streaming budget/anomaly engine as a service (SIGTERM stops it cleanly)."""
    from finops_provider.streaming.service import JsonlSink, serve

    cfg = _config(config)
    led = _ledger(ledger, cfg)
    try:
        m = serve(
            led,
            cfg,
            source,
            consumer=consumer,
            sinks=[JsonlSink(sink_jsonl)] if sink_jsonl else [],
            live=live and console.is_terminal,
            idle_exit=idle_exit,
            max_batch=max_batch,
            console=console,
            allowed_lateness=dt.timedelta(minutes=lateness),
        )
    except ValueError as e:
        err.print(f"[red]--source[/red]: {e}")
        raise typer.Exit(2) from None
    finally:
        led.close()
    console.print(f"stopped: {json.dumps(m.to_json())}")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
