"""Altair charts as pure functions `DataFrame -> alt.Chart` (pages only lay them out)."""

from __future__ import annotations

import altair as alt
import pandas as pd

COLORS = {"A": "#4c78a8", "B": "#f58518", "C": "#54a24b", "all": "#9d9d9d"}
EXTRA = ["#b279a2", "#e45756", "#72b7b2", "#eeca3b", "#ff9da6", "#9d755d"]


def variant_scale(names: pd.Series) -> alt.Scale:
    """One colour per variant on every page (A blue, B orange, C green, "all" grey; other
    arm names from a second palette in sorted order), listing only the variants shown."""
    shown = sorted({str(n) for n in names.dropna()})
    extra = iter(EXTRA * (1 + len(shown) // len(EXTRA)))
    return alt.Scale(domain=shown, range=[COLORS.get(n) or next(extra) for n in shown])


def metric_bars(df: pd.DataFrame, title: str) -> alt.Chart:
    """variant x metric bars (columns: variant, metric, value)."""
    return alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X("variant:N", title=None),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("variant:N", scale=variant_scale(df["variant"]), legend=None),
        column=alt.Column("metric:N", title=None),
        tooltip=["variant", "metric", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=90, height=180)


def segment_bars(df: pd.DataFrame, dimension: str) -> alt.Chart:
    """Diversity per segment of one dimension (columns: variant, dimension, segment,
    diversity)."""
    sub = df[df["dimension"] == dimension]
    return alt.Chart(sub, title=f"diversity by {dimension}").mark_bar().encode(
        x=alt.X("segment:N", title=None), xOffset="variant:N",
        y=alt.Y("diversity:Q", title="intra-list diversity"),
        color=alt.Color("variant:N", scale=variant_scale(sub["variant"])),
        tooltip=["variant", "segment", alt.Tooltip("diversity:Q", format=".3f")],
    ).properties(height=200)


def window_lines(df: pd.DataFrame, metric: str) -> alt.LayerChart | alt.FacetChart:
    """A feedback-loop metric per window (columns: variant, window, metric, value, sd), with
    +-1 sd bars where the value is a mean over samples."""
    sub = df[df["metric"] == metric].assign(
        low=lambda d: d["value"] - d["sd"].fillna(0), high=lambda d: d["value"] + d["sd"].fillna(0))
    base = alt.Chart(sub, title=f"{metric} per window").encode(
        x=alt.X("window:O", title="window (oldest first)"),
        color=alt.Color("variant:N", scale=variant_scale(sub["variant"])))
    lines = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        tooltip=["variant", "window", alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("sd:Q", format=".4f")])
    bars = base.mark_errorbar().encode(y=alt.Y("low:Q", title=metric), y2="high:Q")
    return alt.layer(lines, bars).properties(height=220)


GROUP_TITLES = {"rate": "share of each popularity group recommended",
                "exposure": "share of the position-weighted exposure per group"}


def group_rates(df: pd.DataFrame, column: str = "rate") -> alt.Chart:
    """Head / mid / tail per variant (columns: variant, group, `column` in 0..1)."""
    df = df.dropna(subset=[column])
    return alt.Chart(df, title=GROUP_TITLES[column]).mark_bar().encode(
        x=alt.X("group:N", sort=["head", "mid", "tail"], title=None), xOffset="variant:N",
        y=alt.Y(f"{column}:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("variant:N", scale=variant_scale(df["variant"])),
        tooltip=["variant", "group", alt.Tooltip(f"{column}:Q", format=".3f")],
    ).properties(height=220)


def rating_counts(hist: pd.DataFrame, flagged: pd.DataFrame, lines: pd.DataFrame) -> alt.Chart:
    """How many users posted how many ratings in the window (bars, users on a log scale),
    the 3-sigma and robust-z lines, and each flagged user as a red tick at their count
    (columns: hist count, users; flagged user_id, count; lines rule, x)."""
    x = alt.X("count:Q", title="ratings per user in the window")
    bars = alt.Chart(hist, title="ratings per user: distribution, limits, flagged users") \
        .mark_bar(color="#9d9d9d").encode(
            x=x, y=alt.Y("users:Q", scale=alt.Scale(type="symlog"), title="users"),
            tooltip=["count:Q", "users:Q"])
    ticks = alt.Chart(flagged).mark_tick(color="#e45756", thickness=2, size=18).encode(
        x=x, tooltip=["user_id:Q", "count:Q"])
    rules = alt.Chart(lines).mark_rule(strokeDash=[4, 4]).encode(
        x="x:Q", color=alt.Color("rule:N", title=None), tooltip=["rule:N", "x:Q"])
    return (bars + ticks + rules).properties(height=240)


def interval_bars(df: pd.DataFrame) -> alt.Chart:
    """Watch-through per arm with its 95% interval (columns: variant, watch_through, wt_low,
    wt_high)."""
    base = alt.Chart(df, title="watch-through rate (95% Wilson interval)")
    bars = base.mark_bar().encode(x="variant:N", y=alt.Y("watch_through:Q",
                                                         title="watch-through"),
                                  color=alt.Color("variant:N", scale=variant_scale(df["variant"])))
    errs = base.mark_errorbar().encode(x="variant:N", y=alt.Y("wt_low:Q", title="watch-through"),
                                       y2="wt_high:Q")
    return (bars + errs).properties(height=220)


def p_value_line(df: pd.DataFrame, alpha: float) -> alt.Chart:
    """Always-valid p-value over the looks, one line per treatment (columns: look, arm,
    p_value) with the alpha line."""
    line = alt.Chart(df, title="sequential (mSPRT) p-value").mark_line(point=True).encode(
        x=alt.X("look:O"), y=alt.Y("p_value:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("arm:N", scale=variant_scale(df["arm"])),
        tooltip=["arm", "look", alt.Tooltip("p_value:Q", format=".4f")])
    rule = alt.Chart(pd.DataFrame({"alpha": [alpha]})).mark_rule(
        color="#e45756", strokeDash=[4, 4]).encode(y="alpha:Q")
    return (line + rule).properties(height=220)


def history_lines(df: pd.DataFrame, metric: str) -> alt.Chart:
    """A headline figure over snapshots (columns: end, variant, <metric>)."""
    return alt.Chart(df, title=f"{metric} over time").mark_line(point=True).encode(
        x=alt.X("end:T", title=None), y=alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)),
        color=alt.Color("variant:N", scale=variant_scale(df["variant"])),
        tooltip=["end:T", "variant", alt.Tooltip(f"{metric}:Q", format=".4f")],
    ).properties(height=200)


def counter_bars(df: pd.DataFrame, x: str, title: str) -> alt.Chart:
    """Counts by one label (columns: <x>, value)."""
    return alt.Chart(df, title=title).mark_bar().encode(
        x=alt.X(f"{x}:N", title=None), y=alt.Y("value:Q", title="count"),
        tooltip=[x, "value"]).properties(height=200)


def rate_lines(df: pd.DataFrame) -> alt.Chart:
    """Events per second per topic over time (columns minute, topic, per_second)."""
    return alt.Chart(df, title="events/s per topic").mark_line(point=True).encode(
        x=alt.X("minute:T", title=None), y=alt.Y("per_second:Q", title="events/s"),
        color="topic:N", tooltip=["minute:T", "topic:N", alt.Tooltip("per_second:Q",
                                                                    format=".2f")])


def rating_shift(df: pd.DataFrame) -> alt.Chart:
    """Rating shares before the window and in it, side by side (columns: rating, period,
    share, ratings)."""
    return alt.Chart(df, title="ratings: before the window against in it").mark_bar().encode(
        x=alt.X("rating:O", title="rating"), xOffset="period:N",
        y=alt.Y("share:Q", title="share of ratings"),
        color=alt.Color("period:N", scale=alt.Scale(range=["#9d9d9d", "#4c78a8"]),
                        title=None),
        tooltip=["period", "rating", alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("ratings:Q", title="ratings")],
    ).properties(height=220)


def lorenz_lines(df: pd.DataFrame) -> alt.LayerChart | alt.FacetChart:
    """Lorenz curves of exposure per variant with the line of equal exposure (columns:
    variant, items_share, exposure_share)."""
    pct = alt.Axis(format="%")
    lines = alt.Chart(df, title="Lorenz curve of position-weighted exposure").mark_line(
        point=True).encode(
        x=alt.X("items_share:Q", title="least-exposed share of the catalog", axis=pct),
        y=alt.Y("exposure_share:Q", title="share of all exposure", axis=pct),
        color=alt.Color("variant:N", scale=variant_scale(df["variant"])),
        tooltip=["variant", alt.Tooltip("items_share:Q", format=".0%", title="items"),
                 alt.Tooltip("exposure_share:Q", format=".1%", title="exposure")])
    equal = alt.Chart(pd.DataFrame({"items_share": [0.0, 1.0], "exposure_share": [0.0, 1.0]})
                      ).mark_line(color="#bbbbbb", strokeDash=[4, 4]).encode(
        x="items_share:Q", y="exposure_share:Q")
    return alt.layer(equal, lines).properties(height=260)


def group_history(df: pd.DataFrame) -> alt.FacetChart:
    """Head / mid / tail exposure shares over time, one panel per variant (columns: end,
    variant, group, share)."""
    return alt.Chart(df).mark_area().encode(
        x=alt.X("end:T", title=None),
        y=alt.Y("share:Q", stack="normalize", title="share of exposure", axis=alt.Axis(
            format="%")),
        color=alt.Color("group:N", sort=["head", "mid", "tail"],
                        scale=alt.Scale(domain=["head", "mid", "tail"],
                                        range=["#9d9d9d", "#bab0ac", "#54a24b"])),
        order=alt.Order("group_order:Q"),
        tooltip=["end:T", "variant", "group", alt.Tooltip("share:Q", format=".1%")],
    ).transform_calculate(
        group_order="indexof(['head', 'mid', 'tail'], datum.group)",
    ).properties(height=150, width=260, title="head / mid / tail exposure over time").facet(
        column=alt.Column("variant:N", title=None))
