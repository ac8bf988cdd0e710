"""The embedded broker behind its TLS front (real tansu, real stunnel): the platform's own
clients produce and consume over TLS; plaintext on the TLS port is refused."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import uuid

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from backend.core.settings import Settings
from backend.data.kafka import EventProducer, consumer, ensure_topics
from backend.ops.broker import EmbeddedBroker
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(tmp_path):
    settings = Settings(var_dir=tmp_path / "var", kafka={
        "embedded_port": free_port(), "embedded_tls": True, "embedded_tls_port": free_port()})
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    try:
        broker.start()
        yield settings, broker
    finally:
        broker.stop()


def test_traffic_flows_over_tls_and_plaintext_is_refused(tls_broker):
    settings, broker = tls_broker
    k = settings.kafka
    assert k.security_protocol == "SSL" and k.servers.endswith(f":{k.embedded_tls_port}")
    tls_dir = settings.var_dir / "tls"
    for key in ("server.key", "ca.key"):
        assert stat.S_IMODE((tls_dir / key).stat().st_mode) == 0o600

    # the port speaks TLS with a certificate our CA signed for 127.0.0.1
    ctx = ssl.create_default_context(cafile=str(k.ssl_cafile))
    with socket.create_connection(("127.0.0.1", k.embedded_tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert ("IP Address", "127.0.0.1") in tls.getpeercert()["subjectAltName"]

    # the platform's producer and consumer over SSL, end to end through the broker
    assert "events.rating" in ensure_topics(k)
    producer = EventProducer(k, settings.wal_dir)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for i, event_id in enumerate(ids):
        producer.send("events.rating", {"event_id": event_id, "user_id": i + 1,
                                        "item_id": 7, "rating": 4,
                                        "ts": "2024-03-01T12:00:00Z"}, key=i + 1)
    producer.flush(timeout=20)
    assert not producer.degraded and producer.depth == 0
    producer.close()
    c = consumer(k, group_id=None, enable_auto_commit=False)
    parts = [TopicPartition("events.rating", p) for p in range(k.partitions)]
    c.assign(parts)
    c.seek_to_beginning(*parts)
    seen: set[str] = set()
    for _ in range(20):
        for records in c.poll(timeout_ms=1000).values():
            seen |= {json.loads(r.value)["event_id"] for r in records}
        if seen >= set(ids):
            break
    c.close()
    assert seen == set(ids)

    # a plaintext Kafka client on the TLS port gets nowhere; without the CA neither does TLS
    with pytest.raises(KafkaError) as refused:
        KafkaProducer(bootstrap_servers=k.servers, security_protocol="PLAINTEXT",
                      request_timeout_ms=3000, bootstrap_timeout_ms=3000)
    assert "Unable to bootstrap" in str(refused.value)
    with socket.create_connection(("127.0.0.1", k.embedded_tls_port), timeout=5) as raw, \
            pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")

    broker.stop()
    assert broker.tls.pid() is None and broker.pid() is None
