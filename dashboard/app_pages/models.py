"""Registry versions, provenance and signatures; promote and roll back."""

import streamlit as st

from dashboard import data

st.title("Models")
s = data.settings()
versions = data.registry_versions(str(s.var_dir))
if versions.empty:
    st.info("The registry is empty: `make up` trains the first versions (or `reco train`).")
else:
    st.dataframe(versions, hide_index=True)
    with st.form("promote"):
        variant = st.selectbox("variant", sorted(versions["variant"].unique()))
        choices = versions[versions["variant"] == variant]["version"].tolist()
        version = st.selectbox("version", choices, index=len(choices) - 1)
        cols = st.columns(2)
        promote = cols[0].form_submit_button("promote (verifies first)")
        rollback = cols[1].form_submit_button("roll back to previous")
    if promote:
        status, body = data.admin_post("/admin/promote",
                                       {"variant": variant, "version": version})
        (st.success if status == 200 else st.error)(f"{status}: {body}")
        data.registry_versions.clear()
    if rollback:
        status, body = data.admin_post("/admin/rollback", {"variant": variant})
        (st.success if status == 200 else st.error)(f"{status}: {body}")
        data.registry_versions.clear()

st.subheader("Scheduled runs")
runs = data.schedule_runs(str(s.var_dir))
if runs.empty:
    st.info("No scheduled run yet: the scheduler job (`reco up`) retrains every "
            f"{s.schedule.retrain_interval} s and runs analytics every "
            f"{s.schedule.analyze_interval} s.")
else:
    retrains = runs[runs["kind"] == "retrain"]
    st.caption(f"{len(retrains)} retrains and {len(runs) - len(retrains)} analytics runs "
               "shown, newest first; a refused promotion lists its reasons")
    st.dataframe(runs, hide_index=True)
