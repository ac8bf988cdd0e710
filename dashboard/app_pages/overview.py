"""Is the system healthy, and what serves?"""

import time

import streamlit as st

from dashboard import data

st.title("Overview")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    alerts = data.alerts(s.prometheus.base_url)
    if alerts is None:
        st.caption(f"alerts: Prometheus at {s.prometheus.base_url} does not answer")
    elif alerts.empty:
        st.success("alerts: none pending or firing", icon=":material/check_circle:")
    else:
        for a in alerts.to_dict("records"):
            show = st.error if a["state"] == "firing" else st.warning
            show(f"**{a['alert']}** {a['state']} ({a['labels'] or 'all'}) since {a['since']}: "
                 f"{a['summary']}")
    health = data.health()
    snap = data.latest_snapshot()
    if health is None:
        st.error(f"The API at {data.api_url()} does not answer: start the platform with "
                 "`make up`.")
    else:
        cols = st.columns(4)
        cols[0].metric("API", health.status,
                       help="ok, or degraded while events wait for the broker")
        for col, v in zip(cols[1:3], ("A", "B"), strict=True):
            st_v = health.variants.get(v)
            col.metric(f"variant {v} serves", (st_v and st_v.version) or "nothing",
                       help="verified production version; refused versions listed below")
        cols[3].metric("spool depth", health.spool_depth,
                       help="events waiting in the replicas' write-ahead logs for the "
                            "broker")
        rate, st.session_state["req_scrape"] = data.request_rate(
            data.prometheus(), st.session_state.get("req_scrape"), time.time())
        st.metric("requests/s now", "measuring..." if rate is None else f"{rate:.1f}",
                  help="all API requests per second between the last two scrapes of "
                       "/metrics (reco_requests_total summed over routes and replicas)")
        for v, served in health.variants.items():
            for version, why in served.refused.items():
                st.warning(f"variant {v} refused {version}: {why}")
    if snap is None:
        st.info("No analytics snapshot yet: the analyze job writes one per interval "
                "(`reco analyze --once`), and `reco simulate` drives traffic.")
        return
    sla, window = snap.sla, snap.window
    minutes = window.minutes
    cols = st.columns(4)
    cols[0].metric("uptime", data.fmt(sla.uptime, ".1%"),
                   help="share of /health probes answered (ok or degraded) in the window")
    active = snap.counts.traffic_minutes
    cols[1].metric("recommendations/s", data.fmt(
        snap.counts.recommendations / (active * 60) if active else None, ".2f",
        missing="not enough data"),
        help=f"recommendations logged per second over the {active or 0} minutes of the "
             f"{minutes:g}-minute window that had any (a quiet stretch does not dilute it)")
    cols[2].metric("error rate", data.fmt(sla.error_rate, ".1%"), help="failed health probes")
    cols[3].metric("window", f"{minutes:g} min", help=f"ends {window.end}")
    target = s.analytics.sla_p95_ms
    per_variant = st.columns(3)
    for col, v in zip(per_variant, ("A", "B", "all"), strict=True):
        latency = sla.latency_ms.get(v)
        p95 = latency.p95 if latency else None
        over = p95 is not None and p95 > target
        col.metric(f"p95 latency {v}", "not enough data" if p95 is None else f"{p95:.1f} ms",
                   delta=None if p95 is None else
                   f"{abs(p95 - target):.1f} ms {'over' if over else 'under'} the SLA",
                   delta_color="inverse" if over else "normal", delta_arrow="off",
                   help=f"95th percentile of logged latency; objective {target:g} ms")
    trends(s)


TRENDS = [  # (label, variant, history column, format, how it is computed)
    ("coverage A", "A", "coverage", ".3f", "share of the catalog recommended in the window"),
    ("coverage B", "B", "coverage", ".3f", "share of the catalog recommended in the window"),
    ("Gini A", "A", "gini", ".4f", "Gini of recommendation counts per catalog item"),
    ("Gini B", "B", "gini", ".4f", "Gini of recommendation counts per catalog item"),
    ("p95 latency A (ms)", "A", "p95_ms", ".1f", "95th percentile of logged latency"),
    ("p95 latency B (ms)", "B", "p95_ms", ".1f", "95th percentile of logged latency"),
    ("error rate", "all", "error_rate", ".1%", "failed /health probes in the window"),
    ("spam flagged", "all", "spam_flagged", "d", "users the combined spam flag caught"),
]


def trends(s) -> None:
    """The headline figures over the selected range, one sparkline per tile (a point per
    analytics snapshot)."""
    st.subheader("Over the selected range")
    history = data.in_range(data.history_frame(data.snapshot_history(data.range_minutes())),
                            data.range_minutes())
    points = history["end"].nunique() if not history.empty else 0
    if points < 2:
        st.info(f"Not enough data for trends: {points} analytics snapshot(s) in the range "
                f"(one per {s.schedule.analyze_interval} s while the scheduler runs).")
        return
    st.caption(f"{points} analytics snapshots, oldest to newest; each tile shows the newest")
    cols = st.columns(4)
    for i, (label, variant, column, spec, how) in enumerate(TRENDS):
        line = data.sparkline(history, variant, column)
        newest = line[-1] if line else None
        cols[i % 4].metric(label, data.fmt(int(newest) if spec == "d" and newest is not None
                                           else newest, spec, missing="not enough data"),
                           chart_data=line, chart_type="line", border=True,
                           help=f"{how}; one point per snapshot over the selected range")


body()
