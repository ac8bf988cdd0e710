"""Rating spam, the quarantine, dead letters, auth failures and rate limiting."""

import streamlit as st

from dashboard import charts, console, data, tables

st.title("Security")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    snap = data.latest_snapshot()
    prom = data.prometheus()
    if snap is not None:
        sp = snap.spam
        cols = st.columns(3)
        cols[0].metric("raters in window", sp.raters)
        cols[1].metric("flagged (combined)", len(sp.flagged.combined),
                       help="rated a pushed or nuked item (more unprompted top or bottom "
                            "ratings in the window than its past rate explains), a flood "
                            "(spam_flood ratings in a minute), or a volume outlier (robust "
                            "z of count or burst > spam_z) whose profile is also abnormal "
                            "(RDMA or DegSim)")
        held = data.quarantine()
        cols[2].metric("quarantined users", int((held["status"] == "quarantined").sum()),
                       help="left out of every retrain until an operator releases them "
                            "(`reco quarantine release USER`, POST "
                            "/admin/quarantine/{user}/release)")
        hist, flagged, lines = data.spam_distribution(snap)
        if not hist.empty:
            st.altair_chart(charts.rating_counts(hist, flagged, lines), use_container_width=True)
        else:
            st.caption("ratings per user: not enough data (no rating in the window)")
        tables.show(data.detector_frame(snap))
        if not held.empty:
            st.subheader("quarantine review")
            st.dataframe(held, hide_index=True)
    else:
        st.info("No analytics snapshot yet: run `reco analyze --once` after some traffic.")
    dlq = data.dead_letters()
    st.metric("dead letters", len(dlq), help="refused messages, each kept with its reason")
    if not dlq.empty:
        st.dataframe(dlq.groupby("reason").size().rename("count").reset_index()
                     .sort_values("count", ascending=False), hide_index=True)
    if prom.empty or "name" not in prom:
        st.info("API metrics unavailable: the API is down.")
        return
    for name, label, title in (("reco_auth_failures_total", "status", "auth failures"),
                               ("reco_signin_failures_total", "status", "failed sign-ins"),
                               ("reco_rate_limited_total", "client", "rate-limit 429s")):
        rows = prom[prom["name"] == name]
        if not rows.empty and label in rows:
            st.altair_chart(charts.counter_bars(rows[[label, "value"]], label, title))
        else:
            st.caption(f"{title}: none so far")


body()


entries = data.quarantine()
held_now = entries[entries["status"] == "quarantined"]["user_id"].tolist()
if held_now and console.can_act():
    with st.form("release"):
        user = st.selectbox("release a quarantined user", held_now)
        reason = st.text_input("reason (kept in the audit trail)")
        sure = st.checkbox("I reviewed this user's evidence")
        if st.form_submit_button("release") and console.act_confirmed(
                sure, f"/admin/quarantine/{int(user)}/release", {"reason": reason or None}):
            data.quarantine.clear()
elif held_now:
    console.needs_operator("release a quarantined user")
