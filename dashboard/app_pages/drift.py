"""Drift: the analytics window against everything before it (what the models trained on)."""

import streamlit as st

from dashboard import charts, data, tables

st.title("Drift")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    snap = data.latest_snapshot()
    if snap is None:
        st.info("No analytics snapshot yet: drift compares the analytics window with the "
                "events before it (`reco analyze --once`; `reco simulate` drives traffic).")
        return
    history = data.in_range(data.history_frame(data.snapshot_history(data.range_minutes())),
                            data.range_minutes())
    cols = st.columns(2)
    for col, (label, column, value, what) in zip(cols, (
            ("rating PSI", "rating_psi", snap.drift.rating_psi,
             "the histogram of ratings 1-5"),
            ("item popularity PSI", "popularity_psi", snap.drift.popularity_psi,
             "watches and ratings per popularity decile of the items (deciles from before "
             "the window)")), strict=True):
        col.metric(label, data.fmt(value, ".3f", missing="not enough data"),
                   delta=data.psi_verdict(value), delta_arrow="off",
                   delta_color="inverse" if value is not None and value >= 0.25 else "off",
                   chart_data=data.sparkline(history, "all", column), chart_type="line",
                   border=True,
                   help=f"Population Stability Index of {what}: the {snap.window.minutes:g}-min "
                        "window against every event before it; < 0.1 stable, 0.1-0.25 "
                        "moderate, > 0.25 major shift (Yurdakul 2018). Line: one point per "
                        "snapshot over the selected range")
    shift = data.rating_shift_frame(snap)
    if shift["period"].nunique() < 2:
        st.info("Not enough data for the rating histograms: ratings are needed both before "
                "the window and in it.")
    else:
        st.altair_chart(charts.rating_shift(shift), use_container_width=True)
    st.subheader("Per variant")
    per_variant = data.drift_frame(snap)
    if per_variant.empty:
        st.info("No recommendation in the window: no variant has users to compare.")
    else:
        tables.show(per_variant)
    st.caption("Both variants train on the same lake, so the training window is the same; "
               "each variant's figures are the window's events by the users it served. A PSI "
               "reads \"not enough data\" when, with no shift at all, sampling alone would "
               "exceed 0.1 more often than one time in twenty (Yurdakul 2018).")


body()
