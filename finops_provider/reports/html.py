"""The executive summary as one self-contained HTML file: tables plus plotly charts, offline (the plotly.js
bundle is inlined once, no CDN), every user-controlled string escaped.

Escaping: the page is a Jinja2 template with autoescape; chart data goes into ``<script>`` blocks as JSON with
``<``, ``>`` and ``&`` written as ``\\u003c`` / ``\\u003e`` / ``\\u0026`` (so no value can close the script), and
labels are HTML-escaped before plotly sees them (plotly renders a subset of HTML tags in labels). Money stays
exact in the tables and hover texts; floats are used for drawing only.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections import defaultdict
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from finops_provider.core.money import Money
from finops_provider.core.summary import BREAKDOWNS, fmt_money

#: plotly.js placement: inline (self-contained file) or a URL (the dashboard serves it once, cached)
INLINE = "inline"
CHART_DIMS = ("team", "platform", "cost_center", "dag")
MAX_BURNDOWN_CHARTS = 12


@cache
def plotly_js() -> str:
    """The plotly.js bundle shipped with the plotly Python package (no network)."""
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


def script_json(value: Any) -> str:
    """JSON safe to place inside ``<script>``: no ``</script>``, no ``<!--``, no HTML entities interpreted."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def _json_default(v: Any) -> Any:
    import numpy as np  # plotly figures carry numpy arrays

    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Decimal):
        return float(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def _label(text: Any) -> str:
    """A user-controlled label for plotly: escaped, so plotly shows it literally instead of rendering tags."""
    return html.escape(str(text), quote=False)  # plotly decodes &lt; &gt; &amp; (not &quot;)


def _f(amount: str | Decimal) -> float:
    """Drawing only: plotly needs floats. Tables and hover texts keep the exact amounts."""
    return float(Decimal(amount))


def _layout(title: str, **kw: Any) -> dict[str, Any]:
    base = {
        "title": {"text": _label(title)},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
        "height": 360,
        "template": "plotly_white",
        "legend": {"orientation": "h"},
    }
    base.update(kw)
    return base


def _figure(data: list[Any], layout: dict[str, Any]) -> dict[str, Any]:
    """Validate through plotly's figure model and return the plain figure JSON."""
    import plotly.graph_objects as go

    fig = go.Figure(data=data, layout=layout)
    out: dict[str, Any] = json.loads(fig.to_json())
    out["layout"].pop("template", None)  # the white template's defaults are enough; keeps files small
    out["layout"]["plot_bgcolor"] = "#ffffff"
    return out


def build_charts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's charts as ``{"id", "title", "figure"}`` (figure = plotly JSON)."""
    import plotly.graph_objects as go

    charts: list[dict[str, Any]] = []
    # daily spend by platform, per currency (stacked)
    by_cur: dict[str, dict[str, list[tuple[str, str]]]] = defaultdict(lambda: defaultdict(list))
    for d in summary.get("daily") or []:
        by_cur[d["currency"]][d["platform"]].append((d["day"], d["amount"]))
    for cur in sorted(by_cur):
        traces = [
            go.Bar(
                name=_label(platform),
                x=[day for day, _ in pts],
                y=[_f(a) for _, a in pts],
                text=[fmt_money(a, cur) for _, a in pts],
                hovertemplate="%{x}<br>" + _label(platform) + ": %{text}<extra></extra>",
                textposition="none",
            )
            for platform, pts in sorted(by_cur[cur].items())
        ]
        charts.append(
            {
                "id": f"chart-daily-{cur}",
                "title": f"Daily spend by platform ({cur})",
                "figure": _figure(
                    traces,
                    _layout(
                        f"Daily spend by platform ({cur})",
                        barmode="stack",
                        yaxis={"title": {"text": cur}},
                        xaxis={"type": "category"},
                    ),
                ),
            }
        )
    # breakdowns: top groups per currency
    for dim in CHART_DIMS:
        rows = summary.get("breakdowns", {}).get(dim) or []
        for cur in sorted({r["currency"] for r in rows}):
            rs = [r for r in rows if r["currency"] == cur][::-1]
            title = f"Spend by {BREAKDOWNS[dim].lower()} ({cur})"
            charts.append(
                {
                    "id": f"chart-{dim}-{cur}",
                    "title": title,
                    "figure": _figure(
                        [
                            go.Bar(
                                orientation="h",
                                x=[_f(r["amount"]) for r in rs],
                                y=[_label(r["key"]) for r in rs],
                                text=[f"{fmt_money(r['amount'], cur)} ({r['share_pct']} %)" for r in rs],
                                hovertemplate="%{y}: %{text}<extra></extra>",
                                textposition="none",
                                marker={"color": "#3b6fb6"},
                            )
                        ],
                        _layout(
                            title, height=max(260, 30 * len(rs) + 100), margin={"l": 200, "r": 20, "t": 50, "b": 40}
                        ),
                    ),
                }
            )
    # budget burn-down: cumulative spend vs the budget line and the forecast to the period end
    for i, b in enumerate((summary.get("budget_burndown") or [])[:MAX_BURNDOWN_CHARTS]):
        cur = b["amount"]["currency"]
        days = [p["day"] for p in b["series"]]
        end_day = (dt.datetime.fromisoformat(b["period_end"]) - dt.timedelta(days=1)).date().isoformat()
        start_day = b["period_start"][:10]
        traces = [
            go.Scatter(
                name="spent",
                x=days,
                y=[_f(p["cumulative"]) for p in b["series"]],
                text=[fmt_money(p["cumulative"], cur) for p in b["series"]],
                hovertemplate="%{x}: %{text}<extra>spent</extra>",
                mode="lines+markers",
            ),
            go.Scatter(
                name="budget",
                x=[start_day, end_day],
                y=[_f(b["amount"]["amount"])] * 2,
                text=[fmt_money(b["amount"]["amount"], cur)] * 2,
                hovertemplate="%{text}<extra>budget</extra>",
                mode="lines",
                line={"dash": "dash", "color": "#c0392b"},
            ),
        ]
        if days:
            traces.append(
                go.Scatter(
                    name=f"forecast ({b['forecast_model']})",
                    x=[days[-1], end_day],
                    y=[_f(b["series"][-1]["cumulative"]), _f(b["forecast"]["amount"])],
                    text=[fmt_money(b["series"][-1]["cumulative"], cur), fmt_money(b["forecast"]["amount"], cur)],
                    hovertemplate="%{x}: %{text}<extra>forecast</extra>",
                    mode="lines",
                    line={"dash": "dot", "color": "#7f8c8d"},
                )
            )
        title = f"Budget {b['budget']}: {b['utilisation_pct']} % used"
        charts.append(
            {
                "id": f"chart-burndown-{i}",
                "title": title,
                "figure": _figure(
                    traces,
                    _layout(title, yaxis={"title": {"text": cur}}, xaxis={"type": "date", "tickformat": "%b %d"}),
                ),
            }
        )
    return charts


def _template() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = lambda amount, cur: fmt_money(amount, cur)
    env.filters["script_json"] = script_json
    return env.get_template("report.html.j2")


def render_html(
    summary: dict[str, Any],
    *,
    plotly_src: str = INLINE,
    title: str = "FinOps executive summary",
    dashboard: dict[str, Any] | None = None,
) -> str:
    """Render the summary as a standalone HTML page.

    :param plotly_src: ``"inline"`` embeds plotly.js once (a self-contained, offline file); otherwise the URL
        the page loads it from (the dashboard serves it).
    :param dashboard: dashboard-only context (API URLs for the live feed; see :mod:`finops_provider.plugins`).
    """
    charts = build_charts(summary)
    return str(
        _template().render(
            s=summary,
            title=title,
            charts=charts,
            breakdowns=BREAKDOWNS,
            plotly_inline=plotly_js() if plotly_src == INLINE else None,
            plotly_src=None if plotly_src == INLINE else plotly_src,
            dashboard=dashboard,
            Money=Money,
            Decimal=Decimal,
        )
    )


def write_html(summary: dict[str, Any], path: Path) -> Path:
    """Write the self-contained report to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(summary), encoding="utf-8")
    return path


def write_demo_html(summary: dict[str, Any], out_dir: Path) -> Path:
    """``finops demo``: write ``summary.html`` next to ``summary.md`` / ``summary.json``."""
    return write_html(summary, Path(out_dir) / "summary.html")
