"""Router, rate limiter and API keys, without Ray."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from backend.serving.auth import ApiKeys, digest
from backend.serving.hotpath import hot_request
from backend.serving.ratelimit import RateLimiterLogic
from backend.serving.router import RouterLogic, default_allocation
from backend.serving.schemas import Allocation


def two_arms(split: float, salt: str = "s1") -> Allocation:
    return default_allocation(["A", "B"], split, salt)


def test_router_is_sticky_and_splits_in_proportion():
    router = RouterLogic(two_arms(0.3))
    arms = [router.assign(u) for u in range(1, 20_001)]
    assert arms == [router.assign(u) for u in range(1, 20_001)]  # sticky
    assert binomtest(arms.count("A"), len(arms), 0.3).pvalue > 0.001


def test_router_reconfigure_moves_only_boundary_users():
    router = RouterLogic(two_arms(0.5))
    before = {u: router.assign(u) for u in range(1, 5001)}
    router.follow(two_arms(0.6))
    after = {u: router.assign(u) for u in range(1, 5001)}
    moved = [u for u in before if before[u] != after[u]]
    assert all(before[u] == "B" and after[u] == "A" for u in moved)
    assert 0.05 < len(moved) / 5000 < 0.15
    router.follow(two_arms(0.6, "s2"))
    assert {u: router.assign(u) for u in range(1, 5001)} != after  # new experiment
    with pytest.raises(ValueError):
        router.follow(Allocation(weights={"A": 1.5, "B": -0.5}, salt="s1"))
    assert router.allocation == two_arms(0.6, "s2")  # a refused allocation changes nothing


def test_rate_limit_token_bucket_and_retry_after():
    now = [0.0]
    limiter = RateLimiterLogic(per_minute=60, overrides={"sim": 600}, clock=lambda: now[0])
    assert all(limiter.check("ip-1")[0] for _ in range(60))
    allowed, retry = limiter.check("ip-1")
    assert not allowed and retry == 1  # one token per second
    assert limiter.check("ip-2")[0]  # another client is unaffected
    assert all(limiter.check("sim")[0] for _ in range(600))  # its own limit
    now[0] += 1.0
    assert limiter.check("ip-1") == (True, 0)


def test_api_keys_constant_time_roles():
    keys = ApiKeys({"sim": (digest("client-secret"), "client"),
                    "ops": (digest("admin-secret"), "admin")})
    client, admin = keys.authenticate("client-secret"), keys.authenticate("admin-secret")
    assert client.name == "sim" and admin.role == "admin"
    assert keys.authenticate("wrong") is None and keys.authenticate(None) is None
    assert keys.allowed(client, "client") and not keys.allowed(client, "admin")
    assert keys.allowed(admin, "client") and not keys.allowed(None, "client")
    assert "client-secret" not in repr(keys.__dict__)  # only digests are kept
    with pytest.raises(ValueError):
        ApiKeys({"x": ("abc", "client")})


def test_leases_hold_one_limit_across_replicas():
    from backend.serving.state import ServingStateLogic

    now = [0.0]
    state = ServingStateLogic(per_minute=100, overrides={"key:sim": 6000}, split=0.5,
                              salt="s", variants=["A", "B"], clock=lambda: now[0])
    # three replicas take leases for one anonymous client until refused: 100 in total
    leases = {r: 0 for r in range(3)}
    granted_total, refused = 0, 0
    for i in range(400):
        r = i % 3
        if leases[r] == 0:
            granted, retry = state.acquire("ip:1")
            if not granted:
                refused += 1
                assert retry >= 1
                continue
            leases[r] = granted
            granted_total += granted
        leases[r] -= 1
    assert granted_total == 100 and refused > 0
    assert state.acquire("key:sim") == (50, 0)  # a high-volume key gets bigger leases
    now[0] += 60
    assert state.acquire("ip:1")[0] == 1  # refilled after a minute


def test_experiment_config_survives_replica_restarts():
    from backend.serving.state import ServingStateLogic

    state = ServingStateLogic(100, {}, split=0.5, salt="exp-1", variants=["A", "B"])
    changed = state.set_config(split=0.8, salt=None)
    assert changed.allocation == changed.default == two_arms(0.8, "exp-1")
    assert changed.generation == 1 and changed.b_runtime == {}
    # a replica (re)starting with the deployed user_config does not undo the admin change
    assert state.deployed(0.5, "exp-1").allocation.split == 0.8
    # a new deployed config does apply
    redeployed = state.deployed(0.3, "exp-2")
    assert redeployed.allocation == two_arms(0.3, "exp-2") and redeployed.generation == 2
    # Model B's knobs: a deployed user_config, then an admin change on top of it
    assert state.deployed_runtime({"mmr_lambda": 0.9}).b_runtime == {"mmr_lambda": 0.9}
    assert state.set_config(b_runtime={"tail_slots": 4}).b_runtime == {
        "mmr_lambda": 0.9, "tail_slots": 4}
    assert state.deployed_runtime({"mmr_lambda": 0.9}).b_runtime["tail_slots"] == 4


def test_metrics_sum_replicas_and_render_prometheus_text():
    from prometheus_client.parser import text_string_to_metric_families

    from backend.serving.metrics import MetricsDelta, MetricsLogic, MetricsPayload

    total = MetricsLogic()
    for replica in ("r1", "r2"):
        d = MetricsDelta()
        d.inc("reco_requests_total", {"route": "/recommend", "status": "200", "variant": "A"})
        d.inc("reco_requests_total", {"route": "/recommend", "status": "200", "variant": "A"})
        d.inc("reco_rate_limited_total", {"client": "ip"})
        d.observe(0.003, {"variant": "A"})
        d.observe(7.0, {"variant": "A"})
        d.set("reco_spool_depth", {"replica": replica}, 3)
        d.set("reco_model_info", {"variant": "A", "version": "v0001"}, 1)
        total.merge(MetricsPayload.model_validate(d.as_payload().model_dump()))  # as pushed
    d = MetricsDelta()
    d.set("reco_model_info", {"variant": "A", "version": "v0002"}, 1)
    total.merge(d.as_payload())
    text = total.render({("reco_model_refused", (("variant", "B"),)): 1.0})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("reco_requests_total", (("route", "/recommend"), ("status", "200"),
                                            ("variant", "A")))] == 4
    assert samples[("reco_rate_limited_total", (("client", "ip"),))] == 2
    assert samples[("reco_request_latency_seconds_bucket", (("le", "0.005"),
                                                            ("variant", "A")))] == 2
    assert samples[("reco_request_latency_seconds_count", (("variant", "A"),))] == 4
    assert ("reco_model_info", (("variant", "A"), ("version", "v0001"))) not in samples
    assert samples[("reco_model_info", (("variant", "A"), ("version", "v0002")))] == 1
    assert samples[("reco_spool_depth", (("replica", "r2"),))] == 3
    assert samples[("reco_model_refused", (("variant", "B"),))] == 1


def test_writes_health_sums_live_replicas_and_forgets_gone_ones():
    from backend.serving.metrics import MetricsDelta
    from backend.serving.state import ServingStateLogic

    now = [0.0]
    state = ServingStateLogic(100, {}, 0.5, "s", variants=["A", "B"], clock=lambda: now[0])
    for replica, depth, degraded in (("r1", 3, 1), ("r2", 2, 0)):
        d = MetricsDelta()
        d.set("reco_spool_depth", {"replica": replica}, depth)
        d.set("reco_broker_degraded", {"replica": replica}, degraded)
        state.metrics.merge(d.as_payload())
    assert state.writes_health().model_dump() == {"spool_depth": 5, "degraded_replicas": 1,
                                                  "wal_pending": 0}
    now[0] = 5.0
    d = MetricsDelta()
    d.set("reco_spool_depth", {"replica": "r2"}, 0)
    d.set("reco_broker_degraded", {"replica": "r2"}, 0)
    state.metrics.merge(d.as_payload())
    now[0] = 12.0  # r1 stopped pushing 12 s ago: gone
    assert state.writes_health().model_dump() == {"spool_depth": 0, "degraded_replicas": 0,
                                                  "wal_pending": 0}
    assert 'replica="r1"' not in state.metrics.render()


def test_local_keys_are_private_random_and_registered_by_digest(tmp_path):
    import stat

    from backend.core.settings import Settings
    from backend.serving.auth import digest, ensure_local_keys

    s = ensure_local_keys(Settings(var_dir=tmp_path))
    keys_dir = tmp_path / "keys"
    sim = (keys_dir / "sim.key").read_text()
    assert stat.S_IMODE((keys_dir / "sim.key").stat().st_mode) == 0o600
    assert s.serve.api_keys["sim"].sha256 == digest(sim) and s.serve.api_keys["sim"].role == \
        "client"
    assert s.serve.api_keys["operator"].role == "admin"
    assert sim not in s.model_dump_json()  # only digests in settings
    again = ensure_local_keys(Settings(var_dir=tmp_path))
    assert again.serve.api_keys["sim"].sha256 == digest(sim)  # stable across starts
    other = Settings(var_dir=tmp_path / "o")
    assert ensure_local_keys(other).serve.api_keys["sim"].sha256 != digest(sim)


@pytest.mark.parametrize(("path", "query", "expected"), [
    ("/recommend/7", b"", (7, 10)),
    ("/recommend/7", b"k=3", (7, 3)),
    ("/recommend/10000000", b"k=100", (10_000_000, 100)),
    ("/recommend/0", b"", None),            # out of range: FastAPI answers 422
    ("/recommend/10000001", b"", None),
    ("/recommend/7", b"k=0", None),
    ("/recommend/7", b"k=101", None),
    ("/recommend/7", b"k=3&x=1", None),     # anything else: FastAPI's route
    ("/recommend/-7", b"", None),
    ("/recommend/\u0663", b"", None),      # a non-ASCII digit
    ("/recommend/7/x", b"", None),
    ("/recommend", b"user_id=7", None),
])
def test_only_well_formed_plain_recommend_takes_the_hot_path(path, query, expected):
    scope = {"type": "http", "method": "GET", "path": path, "query_string": query,
             "root_path": ""}
    assert hot_request(scope) == expected
    assert hot_request(scope | {"method": "POST"}) is None


def test_exposition_comes_from_a_collector_with_the_metrics_types_and_names():
    from prometheus_client.parser import text_string_to_metric_families

    from backend.serving.metrics import COUNTERS, GAUGES, MetricsDelta, MetricsLogic

    total = MetricsLogic()
    d = MetricsDelta()
    d.inc("reco_requests_total", {"route": "/health", "status": "200", "variant": ""})
    d.inc("reco_kafka_produce_errors_total", {}, 3)
    d.observe(0.02, {"variant": "B"})
    d.set("reco_broker_degraded", {"replica": "r1"}, 1)
    total.merge(d.as_payload())
    text = total.render()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # counters keep their `_total` sample names; no `_created` series
    assert {n: f.type for n, f in families.items()} == (
        {n.removesuffix("_total"): "counter" for n in COUNTERS}
        | {"reco_request_latency_seconds": "histogram"} | {n: "gauge" for n in GAUGES})
    assert "_created" not in text
    for name in COUNTERS:
        assert f"# TYPE {name} counter" in text
    [errors] = families["reco_kafka_produce_errors"].samples
    assert (errors.name, errors.labels, errors.value) == ("reco_kafka_produce_errors_total",
                                                          {}, 3)
    buckets = [s for s in families["reco_request_latency_seconds"].samples
               if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == ["0.001", "0.0025", "0.005", "0.01", "0.025",
                                                 "0.05", "0.1", "0.25", "0.5", "1", "2.5",
                                                 "+Inf"]
    assert [s.value for s in buckets] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert all(s.labels["variant"] == "B" for s in buckets)
    [degraded] = families["reco_broker_degraded"].samples
    assert degraded.labels == {"replica": "r1"} and degraded.value == 1
    assert families["reco_rate_limited"].samples == []  # declared, none counted yet


def test_router_over_three_arms_splits_by_weight_and_moves_only_what_a_new_weight_moves():
    from scipy.stats import chisquare

    three = Allocation(weights={"A": 0.2, "B": 0.3, "C": 0.5}, salt="s1")
    router = RouterLogic(three)
    arms = [router.assign(u) for u in range(1, 30_001)]
    counts = [arms.count(v) for v in "ABC"]
    assert chisquare(counts, [0.2 * 30_000, 0.3 * 30_000, 0.5 * 30_000]).pvalue > 0.001
    # A's weight to C: users of C stay where they are
    router.follow(Allocation(weights={"A": 0.0, "B": 0.3, "C": 0.7}, salt="s1"))
    after = [router.assign(u) for u in range(1, 30_001)]
    assert "A" not in after
    assert all(b == a for a, b in zip(arms, after, strict=True) if a == "C")


def test_a_running_experiment_wins_over_the_default_split_until_it_stops():
    from backend.serving.state import ServingStateLogic

    running = Allocation(weights={"A": 0.5, "C": 0.5}, salt="x", experiment="e1", epoch=0)
    state = ServingStateLogic(100, {}, 0.5, "exp-1", variants=["A", "B", "C"],
                              running=running)
    assert state.config().allocation == running
    assert state.config().default == two_arms(0.5, "exp-1")  # C serves nobody by default
    # a split change while it runs changes the default only
    during = state.set_config(split=0.9)
    assert during.allocation == running and during.default.split == 0.9
    moved = state.set_allocation(running.model_copy(update={"epoch": 1}), 5)
    assert moved.allocation.epoch == 1 and moved.generation == during.generation + 1
    # an older change handed over late (another replica's admin call) changes nothing
    late = state.set_allocation(running, 4)
    assert late == moved
    stopped = state.set_allocation(None, 6)
    assert stopped.allocation == two_arms(0.9, "exp-1")
    assert state.set_allocation(running, 5).allocation == stopped.allocation
