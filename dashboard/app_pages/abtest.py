"""Which arm wins, how sure we are, and the split control."""

import streamlit as st

from dashboard import charts, console, data, tables

st.title("A/B test")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    snap = data.latest_snapshot()
    if snap is None or not snap.ab.arms:
        st.info("No arms yet: run `reco simulate` and `reco analyze --once`.")
        return
    ab = snap.ab
    if ab.id is not None:
        state = "running" if ab.running else "stopped"
        st.caption(f"Experiment {ab.id} ({state}), control {ab.control}: the users who "
                   f"entered it in epoch {ab.epoch}, from {ab.start} to {ab.end}.")
    else:
        st.caption("No experiment: the window's users under the default split.")
    arms = data.arms_frame(snap)
    tables.show(arms)
    w, srm = ab.winner, ab.srm
    if w is not None and ab.comparisons:
        cols = st.columns(3)
        cols[0].metric("winner", w.variant or "none yet", help=w.reason)
        cols[1].metric("leader", w.leader or "-", help=w.reason)
        cols[2].metric("SRM", "not checked" if srm is None or srm.reason else
                       "mismatch" if srm.mismatch else "ok",
                       help=(srm.reason if srm is not None else None) or
                       f"chi-square p = {data.fmt(srm.p_value if srm else None)} against "
                       "the allocation in force")
        st.caption(f"Against {ab.control}: relative watch-through lift over users (delta "
                   "method), fixed-horizon and always-valid p (mSPRT, safe to read at any "
                   "time), Holm-adjusted over arms and metrics, chance to beat the control "
                   "(flat prior, as GrowthBook), CUPED by pre-experiment watches.")
        tables.show(data.comparisons_frame(snap))
        st.altair_chart(charts.p_value_line(data.sequential_frame(snap), s.analytics.alpha))
    if ab.guardrails:
        tables.show(data.guardrails_frame(snap))
    if ab.epochs:
        st.subheader("Allocation epochs")
        tables.show(data.epochs_frame(snap))
    st.altair_chart(charts.interval_bars(arms.dropna(subset=["watch_through"])))

body()

st.subheader("Split")
health = data.health()
if health is not None and health.experiment is not None:
    st.caption(f"Experiment {health.experiment} (epoch {health.epoch}) allocates the users: "
               f"{health.weights}. Change its weights with `reco experiment set-weights`.")
elif console.can_act():
    current = health.split if health is not None and health.split is not None else 0.5
    with st.form("split"):
        split = st.slider("share of users on A", 0.0, 1.0, float(current), 0.05)
        sure = st.checkbox("I want to change what every user is served")
        if st.form_submit_button("apply split"):
            console.act_confirmed(sure, "/admin/split", {"split": split})
else:
    console.needs_operator("change the split")

st.subheader("Model B's diversity knobs")
knobs = health.variants["B"].runtime if health is not None and "B" in health.variants else {}
if not knobs:
    st.info("Model B is not served, or the API does not answer: no knobs to show.")
else:
    st.caption("In force on every B replica now: "
               + ", ".join(f"{k} {v}" for k, v in sorted(knobs.items())))
    if console.can_act():
        with st.form("diversity"):
            cols = st.columns(3)
            mmr = cols[0].slider("mmr_lambda", 0.0, 1.0, float(knobs.get("mmr_lambda", 0.9)),
                                 0.05, help="relevance weight in MMR re-ranking (1: relevance "
                                 "only, lower: more diverse lists)")
            explore = cols[1].slider("exploration", 0.0, 5.0,
                                     float(knobs.get("exploration", 0.7)), 0.1,
                                     help="strength of the boost for rarely shown items")
            slots = cols[2].number_input("tail_slots", 0, 100,
                                         int(knobs.get("tail_slots", 2)),
                                         help="list positions reserved for long-tail items")
            sure = st.checkbox("I want to change what B's users are served")
            if st.form_submit_button("apply knobs"):
                console.act_confirmed(sure, "/admin/diversity", {
                    "mmr_lambda": mmr, "exploration": explore, "tail_slots": int(slots)})
    else:
        console.needs_operator("change Model B's knobs")

st.subheader("Audit trail")
trail = data.audit_frame(str(data.settings().var_dir))
if trail.empty:
    st.caption("No operator action recorded yet (promotions, rollbacks, split and knob "
               "changes, experiment changes).")
else:
    st.dataframe(trail, hide_index=True)
