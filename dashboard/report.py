"""`reco report`: the milestone report, generated from the platform's own records.

One self-contained HTML file (charts as inline SVG: no script, no network) with the fairness,
feedback-loop, security and A/B sections of the latest analytics snapshot, the history of
the headline figures over the period, the models in production with their provenance, the
experiments, and the audit trail of the period; each section's numbers are written beside it
as JSON (in the page and in `report.json`), taken from the snapshot as it is, so the report
says exactly what the platform computed. A PDF is printed from the HTML by Debian's
`chromium --headless --print-to-pdf` when it is installed.
"""

from __future__ import annotations

import html
import json
import logging
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import vl_convert as vlc
from pydantic import BaseModel

from backend.analytics.snapshot import Snapshot
from backend.core.layout import Keys
from backend.core.settings import Settings
from dashboard import charts, data
from registry import open_experiments, open_quarantine, open_registry

log = logging.getLogger(__name__)
SECTIONS = ("fairness", "feedback", "security", "ab", "models", "audit")


class Section(BaseModel):
    """One part of the report: its heading, what it says, its charts (SVG), its numbers."""

    key: str
    title: str
    text: str
    charts: list[str] = []
    numbers: Any


def svg(chart: alt.TopLevelMixin) -> str:
    return vlc.vegalite_to_svg(chart.to_json())


def snapshots_since(settings: Settings, since: datetime | None) -> list[Snapshot]:
    snaps = data.snapshots(settings.shared_store(),
                           since=None if since is None else pd.Timestamp(since))
    if since is not None:
        snaps = [s for s in snaps if pd.Timestamp(s.window.end) >= pd.Timestamp(since)]
    return snaps


def sections(settings: Settings, snap: Snapshot, history: Sequence[Snapshot],
             since: datetime | None) -> list[Section]:
    dump = snap.model_dump(mode="json")
    out = []
    fair = data.fairness_frame(snap)
    out.append(Section(
        key="fairness", title="Fairness",
        text=f"Catalog coverage, Gini and top-10 share of the recommendations per variant in "
             f"the window {snap.window.start} .. {snap.window.end}; exposure by user "
             f"segment.",
        charts=[svg(charts.metric_bars(fair, "fairness per variant"))] if not fair.empty
        else [], numbers=dump["fairness"]))
    hist = data.history_frame(list(history))
    echo = data.echo_frame(snap)
    feedback_charts = [svg(charts.window_lines(echo, "gini"))] if not echo.empty else []
    if not hist.empty:
        feedback_charts.append(svg(charts.history_lines(hist, "gini")))
    tails = data.tail_frame(snap)
    if not tails.empty:
        feedback_charts.append(svg(charts.group_rates(tails)))
    out.append(Section(
        key="feedback", title="Feedback loops",
        text="The echo-chamber trend (rarefied Gini per window, its slope and 95% interval), "
             "homogenisation, and head/mid/tail exposure with the head/tail ratio's interval; "
             f"{len(history)} snapshots in the period.",
        charts=feedback_charts, numbers={"echo": dump["echo"], "tail": dump["tail"]}))
    hist, flagged, lines = data.spam_distribution(snap)
    out.append(Section(
        key="security", title="Security",
        text="Rating-spam detectors over the window's ratings and the quarantine they fill "
             "(released users count again at the next retrain).",
        charts=[svg(charts.rating_counts(hist, flagged, lines))] if not hist.empty else [],
        numbers={"spam": dump["spam"], "quarantine": json.loads(
            open_quarantine(settings).read().model_dump_json())}))
    arms = data.arms_frame(snap)
    shown = arms.dropna(subset=["watch_through"]) if "watch_through" in arms else arms
    out.append(Section(
        key="ab", title="A/B experiment",
        text="Per-arm outcomes with intervals, the comparisons (always-valid and fixed "
             "horizon), guardrails and the sample-ratio check.",
        charts=[svg(charts.interval_bars(shown))] if not shown.empty else [],
        numbers=dump["ab"]))
    registry = open_registry(settings)
    models: dict[str, Any] = {}
    for variant in registry.variants():
        aliases = registry.aliases(variant)
        production = aliases.production
        models[variant] = {"aliases": aliases.named(), "production": None if production is
                           None else json.loads(registry.manifest(variant, production)
                                                .model_dump_json())}
    store = open_experiments(settings)
    out.append(Section(
        key="models", title="Models and experiments",
        text="The version each variant serves, with its signed manifest's provenance "
             "(training data, evaluation, gates, forecast), and every experiment recorded.",
        numbers={"models": models, "experiments": [json.loads(e.model_dump_json())
                                                   for e in store.experiments().values()]}))
    events = [e for e in store.events() if since is None or e.ts >= since]
    out.append(Section(
        key="audit", title="Audit trail",
        text=f"{len(events)} operator actions, sign-ins and experiment changes "
             f"{'since ' + since.isoformat() if since else 'on record'}.",
        numbers=[json.loads(e.model_dump_json()) for e in events]))
    return out


def render(parts: Sequence[Section], generated: datetime, snap: Snapshot) -> str:
    body = []
    for p in parts:
        numbers = json.dumps(p.numbers, indent=1, sort_keys=True, default=str)
        body.append(
            f'<section id="{p.key}"><h2>{html.escape(p.title)}</h2>'
            f"<p>{html.escape(p.text)}</p>"
            + "".join(f'<figure>{c}</figure>' for c in p.charts)
            + f'<details><summary>numbers (JSON)</summary><pre>{html.escape(numbers)}</pre>'
              f'</details><script type="application/json" id="data-{p.key}">'
            + numbers.replace("</", "<\\/") + "</script></section>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Recommender report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "figure{margin:1em 0}pre{font-size:11px;max-height:30em;overflow:auto;"
        "background:#f6f6f6;padding:.5em}section{page-break-inside:avoid}</style></head>"
        f"<body><h1>Movie recommender: operations report</h1><p>Generated "
        f"{generated.isoformat(timespec='seconds')} from the analytics snapshot of the window "
        f"{html.escape(snap.window.start)} .. {html.escape(snap.window.end)} "
        f"({snap.counts.recommendations} recommendations, {snap.counts.ratings} ratings, "
        f"{snap.counts.users} users).</p>" + "".join(body) + "</body></html>")


def write_report(settings: Settings, out: Path, since: datetime | None = None,
                 pdf: bool = True) -> dict[str, Path]:
    """Write report.html, report.json (and report.pdf when chromium is there) to `out`."""
    history = snapshots_since(settings, since)
    snap = data.read_snapshot(settings.shared_store(), Keys.latest_snapshot)
    if snap is None:
        raise FileNotFoundError("no analytics snapshot yet: run `reco analyze --once` after "
                                "some traffic")
    generated = datetime.now(UTC)
    parts = sections(settings, snap, history, since)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / "report.html", "json": out / "report.json"}
    paths["html"].write_text(render(parts, generated, snap))
    paths["json"].write_text(json.dumps(
        {"generated": generated.isoformat(), "window": snap.window.model_dump(mode="json"),
         "since": since.isoformat() if since else None,
         "sections": {p.key: p.numbers for p in parts}}, indent=1, default=str))
    chromium = shutil.which("chromium")
    if pdf and chromium:
        target = out / "report.pdf"
        done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                               f"--print-to-pdf={target}", "--no-pdf-header-footer",
                               paths["html"].resolve().as_uri()],
                              capture_output=True, timeout=120)
        if done.returncode == 0 and target.exists():
            paths["pdf"] = target
        else:
            log.warning("pdf not printed returncode=%s", done.returncode)
    log.info("report written out=%s sections=%d", out, len(parts))
    return paths
