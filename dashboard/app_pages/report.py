"""The operations report (`reco report`) for the sidebar's time range, written and offered."""

from datetime import UTC, datetime, timedelta

import streamlit as st

from dashboard import data
from dashboard.report import write_report

st.title("Report")
s = data.settings()
if data.latest_snapshot() is None:
    st.info("Not enough data for a report: it is written from the latest analytics snapshot, "
            "and there is none yet (`make up` writes one after some traffic, or "
            "`reco analyze --once`).")
else:
    minutes = data.range_minutes()
    st.caption(f"The fairness, feedback-loop, security, A/B, models-and-experiments and audit "
               f"sections: the latest snapshot's figures as charts with their numbers as JSON, "
               f"the history and the audit trail of the last {minutes} minutes (the sidebar's "
               f"time range). Written to var/reports/, the same files as `reco report`.")
    if st.button("write the report"):
        now = datetime.now(UTC)
        out = s.var_dir / "reports" / now.strftime("%Y%m%dT%H%M%SZ")
        with st.spinner("drawing the charts and printing the PDF"):
            st.session_state["report"] = write_report(s, out, now - timedelta(minutes=minutes))
    paths = st.session_state.get("report")
    if paths:
        st.success(f"Written to {paths['html'].parent}")
        cols = st.columns(3)
        for col, (kind, mime) in zip(cols, [("html", "text/html"), ("pdf", "application/pdf"),
                                            ("json", "application/json")], strict=True):
            if kind in paths:
                col.download_button(f"download report.{kind}", paths[kind].read_bytes(),
                                    file_name=f"report.{kind}", mime=mime)
