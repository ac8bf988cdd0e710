"""Echo chamber, long-tail starvation and homogenisation."""

import streamlit as st

from dashboard import charts, data

st.title("Feedback loops")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    snap = data.latest_snapshot()
    if snap is None:
        st.info("No analytics snapshot yet: run `reco analyze --once` after some traffic.")
        return
    echo, cfg = snap.echo, s.analytics
    cols = st.columns(3)
    for col, v in zip(cols, ("A", "B", "all"), strict=True):
        series = echo.variants.get(v)
        if series:
            t = series.gini_trend
            value, verdict = data.trend_text(t)
            ci = ("" if t.ci_low is None or t.ci_high is None
                  else f" [{t.ci_low:+.4f}, {t.ci_high:+.4f}]")
            col.metric(f"{v}: Gini slope / window", value,
                       delta="echo chamber" if t.detected else verdict, delta_arrow="off",
                       delta_color="inverse" if t.detected else "off",
                       help=f"least-squares slope of the rarefied Gini over the last "
                            f"{echo.windows} windows of {snap.window.minutes:g} min, 95% "
                            f"CI{ci}; echo when the CI's lower bound is above "
                            f"{cfg.echo_slope_max}; needs {cfg.echo_min_windows} windows "
                            f"with at least {cfg.echo_sample_min} recommended items")
    frame = data.echo_frame(snap)
    left, right = st.columns(2)
    left.altair_chart(charts.window_lines(frame, "gini"), use_container_width=True)
    right.altair_chart(charts.window_lines(frame, "exposure_gini"), use_container_width=True)
    st.caption("Gini of samples of the same number of recommended items per catalog item in "
               "every window, over the items released by then (bars: spread over the "
               "samples); exposure Gini weighs each slot by 1/log2(rank + 1).")
    cols = st.columns(3)
    for col, v in zip(cols, ("A", "B", "all"), strict=True):
        tail = snap.tail.get(v)
        if tail:
            ratio = tail.head_tail_ratio
            col.metric(f"{v}: head/tail ratio", data.fmt(ratio, ".2f", missing="no ratio"),
                       delta="starved" if tail.starved else (tail.reason or "ok"),
                       delta_arrow="off",
                       delta_color="inverse" if tail.starved else "off",
                       help=f"share of head items recommended / share of tail items, by "
                            f"popularity before the window, with Katz's 95% interval "
                            f"{data.interval_text(tail.ratio_ci_low, tail.ratio_ci_high)}; "
                            f"starved when the interval lies above {tail.limit}"
                            + (f"; {tail.reason}" if tail.reason else ""))
    tails = data.tail_frame(snap)
    left, right = st.columns(2)
    left.altair_chart(charts.group_rates(tails), use_container_width=True)
    right.altair_chart(charts.group_rates(tails, "exposure"), use_container_width=True)
    minutes = data.range_minutes()
    groups = data.group_history(data.in_range(data.history_frame(
        data.snapshot_history(minutes)), minutes))
    if groups["end"].nunique() < 2:
        st.info("Not enough data for head / mid / tail exposure over time: fewer than two "
                "analytics snapshots with recommendations in the selected range.")
    else:
        st.altair_chart(charts.group_history(groups))
    value, verdict = data.trend_text(echo.variants["all"].homogenization_trend
                                     if "all" in echo.variants else None)
    left, right = st.columns(2)
    left.metric("homogenisation, last window", data.fmt(echo.homogenization,
                                                        missing="not enough data"),
                help="mean Jaccard similarity of sampled user pairs' watches in the window, "
                     "users served in it only (Chaney 2018)")
    right.metric("homogenisation slope / window", value, delta=verdict, delta_color="off",
                 delta_arrow="off")
    st.altair_chart(charts.window_lines(frame, "homogenization"), use_container_width=True)


body()
