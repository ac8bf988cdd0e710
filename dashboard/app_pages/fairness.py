"""Exposure fairness and diversity parity, against the requirements."""

import streamlit as st

from dashboard import charts, data

st.title("Fairness")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    snap = data.latest_snapshot()
    if snap is None or not snap.fairness:
        st.info("No analytics snapshot yet: run `reco analyze --once` after some traffic.")
        return
    for v, f in snap.fairness.items():
        req = f.requirements
        cols = st.columns(4)
        cols[0].metric(f"{v}: catalog coverage", f"{f.coverage:.3f}",
                       help=f"share of the catalog recommended at least once; requirement "
                            f">= {req.coverage.min}")
        cols[1].metric(f"{v}: Gini", f"{f.gini:.3f}",
                       help="RecBole Gini of recommendation counts over the whole catalog")
        cols[2].metric(f"{v}: top-10 share", f"{f.top10_share:.3f}",
                       help="share of all slots taken by the 10 most recommended items")
        failed = req.failed()
        cols[3].metric(f"{v}: requirements", "FAIL" if failed else "pass",
                       help=f"coverage >= {req.coverage.min} "
                            f"({'fails' if 'coverage' in failed else 'holds'}); diversity "
                            f"parity gap < {req.parity.max} (gap {req.parity.value:.3f}, "
                            f"{'fails' if 'parity' in failed else 'holds'})")
    st.altair_chart(charts.metric_bars(data.fairness_frame(snap), "exposure per variant"))
    curves = data.lorenz_frame(snap)
    if curves.empty:
        st.info("Not enough data for the Lorenz curve: no recommendation in the window.")
    else:
        st.altair_chart(charts.lorenz_lines(curves), use_container_width=True)
        st.caption("How unequal exposure is: the dashed line is equal exposure; the further "
                   "below it, the more the slots go to few items (each slot weighted by "
                   "1/log2(rank + 1); its Gini is the exposure Gini).")
    history = data.in_range(data.history_frame(data.snapshot_history(data.range_minutes())),
                            data.range_minutes())
    if len(history) > 1:
        pair = st.columns(2)
        for col, metric in zip(pair, ("coverage", "gini"), strict=True):
            col.altair_chart(charts.history_lines(history, metric), use_container_width=True)
    seg = data.segment_frame(snap)
    if seg.empty:
        st.info("No diversity figures yet (needs recommendations with genre data).")
        return
    dims = sorted(seg["dimension"].unique())
    dim = st.selectbox("segments", dims, key="fair_dim")
    st.altair_chart(charts.segment_bars(seg, dim), use_container_width=True)


body()
