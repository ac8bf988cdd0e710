"""Which arm wins, how sure we are, and the split control."""

import streamlit as st

from dashboard import charts, data

st.title("A/B test")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    snap = data.latest_snapshot(str(s.var_dir))
    if snap is None or not snap.ab.arms:
        st.info("No arms yet: run `reco simulate` and `reco analyze --once`.")
        return
    ab = snap.ab
    arms = data.arms_frame(snap)
    st.dataframe(arms, hide_index=True)
    w, seq, wt_test, srm = ab.winner, ab.sequential, ab.watch_through_test, ab.srm
    if w is not None and seq is not None and wt_test is not None and srm is not None:
        st.metric("winner", w.variant or "none yet", help=w.reason)
        cols = st.columns(4)
        cols[0].metric("always-valid p", data.fmt(seq.p_value),
                       help="over users (mSPRT, Johari et al. 2017): safe to read at any time")
        cols[1].metric("watch-through lift B vs A", data.fmt(wt_test.relative, ".1%"),
                       help="relative, over users (delta method); 95% interval "
                            f"{data.fmt(wt_test.relative_ci_low, '.1%')} to "
                            f"{data.fmt(wt_test.relative_ci_high, '.1%')}, fixed-horizon p "
                            f"{data.fmt(wt_test.p_value)}")
        win_b = ab.bayes.chance_to_win if ab.bayes else None
        cols[2].metric("chance B beats A", data.fmt(win_b, ".0%"),
                       help="posterior of the lift under a flat prior (as GrowthBook)")
        cols[3].metric("SRM", "mismatch" if srm.mismatch else
                       "not checked" if srm.reason else "ok",
                       help=srm.reason or f"chi-square p = {data.fmt(srm.p_value)} against "
                       f"the split in force ({data.fmt(srm.split, '.0%')} on A)")
        st.altair_chart(charts.p_value_line(data.sequential_frame(snap), s.analytics.alpha))
    st.altair_chart(charts.interval_bars(arms.dropna(subset=["watch_through"])))


body()

st.subheader("Split")
health = data.health()
if health is not None and health.experiment is not None:
    st.caption(f"Experiment {health.experiment} (epoch {health.epoch}) allocates the users: "
               f"{health.weights}. Change its weights with `reco experiment set-weights`.")
else:
    current = health.split if health is not None and health.split is not None else 0.5
    with st.form("split"):
        split = st.slider("share of users on A", 0.0, 1.0, float(current), 0.05)
        if st.form_submit_button("apply split"):
            status, body_ = data.admin_post("/admin/split", {"split": split})
            (st.success if status == 200 else st.error)(f"{status}: {body_}")

st.subheader("Audit trail")
trail = data.audit_frame(str(data.settings().var_dir))
if trail.empty:
    st.caption("No operator action recorded yet (promotions, rollbacks, split and knob "
               "changes, experiment changes).")
else:
    st.dataframe(trail, hide_index=True)
