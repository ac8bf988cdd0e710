"""Echo chamber, long-tail starvation and homogenisation."""

import streamlit as st

from dashboard import charts, data

st.title("Feedback loops")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    snap = data.latest_snapshot(str(s.var_dir))
    if snap is None:
        st.info("No analytics snapshot yet: run `reco analyze --once` after some traffic.")
        return
    echo = snap.echo
    cols = st.columns(3)
    for col, v in zip(cols, ("A", "B", "all"), strict=True):
        series = echo.variants.get(v)
        if series:
            t = series.gini_trend
            ci = ("" if t.ci_low is None or t.ci_high is None
                  else f" [{t.ci_low:+.4f}, {t.ci_high:+.4f}]")
            col.metric(f"{v}: Gini slope / window", f"{t.slope:+.4f}",
                       delta="echo chamber" if t.detected else "no echo",
                       delta_color="inverse" if t.detected else "off",
                       help=f"least-squares slope over {echo.windows} windows, 95% CI{ci}; "
                            f"echo when above {s.analytics.echo_slope_max}")
    frame = data.echo_frame(snap)
    left, right = st.columns(2)
    left.altair_chart(charts.window_lines(frame, "gini"), use_container_width=True)
    right.altair_chart(charts.window_lines(frame, "top10_share"), use_container_width=True)
    cols = st.columns(3)
    for col, v in zip(cols, ("A", "B", "all"), strict=True):
        tail = snap.tail.get(v)
        if tail:
            ratio = tail.head_tail_ratio
            col.metric(f"{v}: head/tail ratio", data.fmt(ratio, ".2f", missing="inf"),
                       delta="starved" if tail.starved else "ok",
                       delta_color="inverse" if tail.starved else "off",
                       help=f"recommendation rate of head items / tail items; starvation "
                            f"above {tail.limit}")
    st.altair_chart(charts.group_rates(data.tail_frame(snap)), use_container_width=True)
    st.metric("homogenisation", f"{echo.homogenization:.4f}",
              help="mean Jaccard similarity of paired users' watched items (Chaney 2018)")


body()
