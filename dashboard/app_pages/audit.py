"""The audit trail: every operator action, sign-in and experiment change, server-side."""

import streamlit as st

from dashboard import data

st.title("Audit")
trail = data.audit_frame(str(data.settings().var_dir), last=None)
if trail.empty:
    st.info("Nothing recorded yet: operator actions (split, promote, rollback, diversity "
            "knobs, quarantine) from the console, the admin API or the `reco` CLI, sign-ins "
            "and experiment changes appear here.")
else:
    cols = st.columns([1, 1, 2])
    actors = cols[0].multiselect("actor", sorted(trail["actor"].unique()))
    actions = cols[1].multiselect("action", sorted(trail["action"].unique()))
    text = cols[2].text_input("contains (actor, action or detail)")
    shown = data.filter_audit(trail, actors, actions, text)
    st.caption(f"{len(shown)} of {len(trail)} records, newest first; written by the API (or "
               "the `reco` CLI) once the action took effect")
    st.dataframe(shown, hide_index=True)
