"""The operations dashboard: `reco dashboard` (streamlit run dashboard/streamlit_app.py)."""

import streamlit as st

from dashboard import console
from dashboard.data import RANGES

st.set_page_config(page_title="Recommender operations", page_icon=":material/movie:",
                   layout="wide")
pages = [
    st.Page("app_pages/overview.py", title="Overview", default=True),
    st.Page("app_pages/fairness.py", title="Fairness"),
    st.Page("app_pages/feedback.py", title="Feedback loops"),
    st.Page("app_pages/security.py", title="Security"),
    st.Page("app_pages/abtest.py", title="A/B test"),
    st.Page("app_pages/models.py", title="Models"),
    st.Page("app_pages/drift.py", title="Drift"),
    st.Page("app_pages/stream.py", title="Stream"),
    st.Page("app_pages/audit.py", title="Audit"),
    st.Page("app_pages/report.py", title="Report"),
]
nav = st.navigation(pages)
st.sidebar.selectbox("time range", list(RANGES), index=1, key="time_range",
                     help="how far back the time-series charts reach (snapshots, event rates)")
console.sidebar()
nav.run()
