"""Streamlit operations dashboard (built with the dashboard issue)."""
