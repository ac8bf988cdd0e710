"""Event flow: lake growth per topic, the DLQ, produce errors."""

import pandas as pd
import streamlit as st

from backend.data.deadletters import REPLAYABLE
from backend.data.lake import Lake
from dashboard import charts, console, data

st.title("Stream")


@st.fragment(run_every=data.REFRESH)
def body() -> None:
    s = data.settings()
    stats = Lake.open(s).stats()
    frame = pd.DataFrame([{"topic": t, "value": st_["rows"]} for t, st_ in stats.items()])
    cols = st.columns(len(stats))
    for col, (topic, st_) in zip(cols, stats.items(), strict=True):
        col.metric(topic, f"{st_['rows']:,}", help=f"rows in the lake; newest {st_['newest_ts']}")
    st.altair_chart(charts.counter_bars(frame, "topic", "events in the lake"))
    minutes = data.range_minutes()
    rates = data.event_rates(data.lake_times(minutes), minutes)
    if rates.empty:
        st.info("No events landed in the selected time range: start traffic with "
                "`reco simulate` (or `make up`, which runs the simulator).")
    else:
        st.altair_chart(charts.rate_lines(rates), use_container_width=True)
    dlq = data.dead_letters()
    st.metric("dead letters (all time)", len(dlq),
              help="messages the ingest job refused (malformed, oversized, out of range), "
                   "kept with the reason in events.dlq; `reco dlq list` / `replay`")
    if not dlq.empty:
        reasons = dlq.groupby(["source_topic", "reason"]).size().rename("count")
        st.dataframe(reasons.reset_index().sort_values("count", ascending=False),
                     hide_index=True)
    history = data.in_range(data.history_frame(data.snapshot_history(data.range_minutes())),
                            minutes)
    if not history.empty:
        st.altair_chart(charts.history_lines(history, "recommendations"),
                        use_container_width=True)
    prom = data.prometheus()
    if not prom.empty and "name" in prom:
        spooled = prom[prom["name"] == "reco_kafka_produce_errors_total"]["value"].sum()
        st.metric("events spooled (broker away)", int(spooled),
                  help="events that waited in the API's write-ahead log for the broker")


body()

st.subheader("Replay dead letters")
st.caption("After a fix upstream or a contract change: the raw messages go back to their "
           "source topics, the ingest job validates them again, lands the valid ones once "
           "(by event_id) and dead-letters the rest again.")
if console.can_act():
    with st.form("replay"):
        cols = st.columns(2)
        topic = cols[0].selectbox("source topic", ["all", *REPLAYABLE])
        contains = cols[1].text_input("error contains (empty: any)")
        sure = st.checkbox("I fixed what refused them")
        if st.form_submit_button("replay"):
            console.act_confirmed(sure, "/admin/dlq/replay", {
                "topic": None if topic == "all" else topic, "contains": contains or None})
else:
    console.needs_operator("replay dead letters")
