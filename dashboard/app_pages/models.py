"""Registry versions, provenance and signatures; promote and roll back."""

import streamlit as st

from dashboard import console, data, tables

st.title("Models")
s = data.settings()
versions = data.registry_versions(str(s.var_dir))
if versions.empty:
    st.info("The registry is empty: `make up` trains the first versions (or `reco train`).")
else:
    tables.show(versions, missing="not available")
    if console.can_act():
        with st.form("promote"):
            variant = st.selectbox("variant", sorted(versions["variant"].unique()))
            choices = versions[versions["variant"] == variant]["version"].tolist()
            version = st.selectbox("version", choices, index=len(choices) - 1)
            sure = st.checkbox("I want to change what this variant serves")
            cols = st.columns(2)
            promote = cols[0].form_submit_button("promote (verifies first)")
            rollback = cols[1].form_submit_button("roll back to previous")
        if promote or rollback:
            console.act_confirmed(sure, *(("/admin/promote", {"variant": variant,
                                                               "version": version})
                                          if promote else ("/admin/rollback",
                                                           {"variant": variant})))
            data.registry_versions.clear()
    else:
        console.needs_operator("promote or roll back")

st.subheader("Scheduled runs")
state = data.schedule_state()
running = state.get("running", {}).get("retrain") if state else None
request = data.retrain_request()
if running:
    st.info(f"A retrain is running: {running['id']}, started "
            f"{data.ago(running['start'])}; its outcome appears below when it ends.")
if request is not None:
    st.info(f"Retrain asked for by {request.actor} {data.ago(request.requested)}: the "
            "scheduler submits it on its next tick" + (" after the running one."
                                                       if running else "."))
if console.can_act():
    with st.form("retrain"):
        reason = st.text_input("why retrain now (kept in the audit trail)")
        sure = st.checkbox("I want a retrain now (it may promote, through the usual gates)")
        if st.form_submit_button("retrain now"):
            console.act_confirmed(sure, "/admin/retrain", {"reason": reason or None})
else:
    console.needs_operator("ask for a retrain now")
runs = data.schedule_runs()
if runs.empty:
    st.info("No scheduled run yet: the scheduler job (`reco up`) retrains every "
            f"{s.schedule.retrain_interval} s and runs analytics every "
            f"{s.schedule.analyze_interval} s.")
else:
    retrains = runs[runs["kind"] == "retrain"]
    st.caption(f"{len(retrains)} retrains and {len(runs) - len(retrains)} analytics runs "
               "shown, newest first; a refused promotion lists its reasons")
    st.dataframe(runs, hide_index=True)
