"""Router, rate limiter and API keys, without Ray."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from backend.serving.auth import ApiKeys, digest
from backend.serving.ratelimit import RateLimiterLogic
from backend.serving.router import RouterLogic


def test_router_is_sticky_and_splits_in_proportion():
    router = RouterLogic(split=0.3, salt="s1")
    arms = [router.assign(u) for u in range(1, 20_001)]
    assert arms == [router.assign(u) for u in range(1, 20_001)]  # sticky
    assert binomtest(arms.count("A"), len(arms), 0.3).pvalue > 0.001


def test_router_reconfigure_moves_only_boundary_users():
    router = RouterLogic(split=0.5, salt="s1")
    before = {u: router.assign(u) for u in range(1, 5001)}
    router.reconfigure({"split": 0.6})
    after = {u: router.assign(u) for u in range(1, 5001)}
    moved = [u for u in before if before[u] != after[u]]
    assert all(before[u] == "B" and after[u] == "A" for u in moved)
    assert 0.05 < len(moved) / 5000 < 0.15
    router.reconfigure({"salt": "s2"})
    assert {u: router.assign(u) for u in range(1, 5001)} != after  # new experiment
    with pytest.raises(ValueError):
        router.reconfigure({"split": 1.5})


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
