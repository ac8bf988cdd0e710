"""Console accounts and sessions: scrypt-hashed passwords in a 0600 file, signed expiring
tokens, a lock after repeated failures, and the API's sign-in route and roles."""

from __future__ import annotations

import hashlib
import stat
from typing import Any

import pytest

from backend.core.errors import RecoError
from backend.core.settings import ConsoleSettings
from backend.serving.metrics import take_replica_delta
from backend.serving.sessions import Sessions, session_secret
from registry.accounts import SCRYPT, AccountError, AccountStore
from tests.unit.test_ingress_logic import Rig
from tests.unit.test_serving_api import call

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def accounts(tmp_path) -> AccountStore:
    store = AccountStore(tmp_path / "keys" / "accounts.json")
    store.add("alice", "operator", PASSWORD)
    store.add("victor", "viewer", PASSWORD + "!")
    return store


def sessions(accounts: AccountStore, clock: Clock, **cfg: Any) -> Sessions:
    return Sessions(ConsoleSettings(**cfg), accounts, b"s" * 48, clock=clock)


def test_accounts_keep_scrypt_hashes_in_a_private_file(accounts):
    raw = accounts.path.read_text()
    assert PASSWORD not in raw and stat.S_IMODE(accounts.path.stat().st_mode) == 0o600
    alice = accounts.accounts()["alice"]
    # the stored hash is scrypt of the password under its salt (RFC 7914 via hashlib)
    assert alice.scrypt == hashlib.scrypt(PASSWORD.encode(), salt=bytes.fromhex(alice.salt),
                                          dklen=32, maxmem=64 * 2**20, **SCRYPT).hex()
    assert accounts.verify("alice", PASSWORD) == alice
    assert accounts.verify("alice", PASSWORD + "x") is None
    assert accounts.verify("nobody", PASSWORD) is None
    with pytest.raises(AccountError):
        accounts.add("alice", "viewer", "another long password")
    with pytest.raises(AccountError) as short:
        accounts.add("bob", "viewer", "short")
    assert short.value.status_code == 422
    accounts.remove("victor")
    assert set(accounts.accounts()) == {"alice"}


def test_session_secret_is_made_once_and_private(tmp_path):
    path = tmp_path / "keys" / "session.key"
    first = session_secret(path)
    assert len(first) >= 32 and session_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_token_names_its_account_until_it_expires_or_the_account_goes(accounts):
    clock = Clock()
    s = sessions(accounts, clock, session_minutes=30)
    token, role, expires = s.sign_in("alice", PASSWORD)
    assert role == "operator" and expires.timestamp() == clock.now + 30 * 60
    who = s.principal(token)
    assert (who.name, who.role, who.actor) == ("alice", "admin", "user:alice")
    viewer = s.principal(s.sign_in("victor", PASSWORD + "!")[0])
    assert viewer.role == "viewer"
    assert s.principal(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]) is None
    assert s.principal("not a token") is None and s.principal(None) is None
    clock.now += 31 * 60
    assert s.principal(token) is None  # expired
    clock.now -= 31 * 60
    accounts.remove("alice")
    assert s.principal(token) is None  # removed accounts lose their sessions at once


def test_failed_sign_ins_lock_the_account_for_the_window(accounts):
    clock = Clock()
    s = sessions(accounts, clock, signin_failures=3, signin_window_minutes=10)
    for _ in range(3):
        with pytest.raises(RecoError) as wrong:
            s.sign_in("alice", "wrong password")
        assert wrong.value.status_code == 401
    with pytest.raises(RecoError) as locked:
        s.sign_in("alice", PASSWORD)  # even the right password, while locked
    assert locked.value.status_code == 429
    assert 0 < int(locked.value.headers["Retry-After"]) <= 600
    assert s.sign_in("victor", PASSWORD + "!")[1] == "viewer"  # other accounts unaffected
    clock.now += 601
    assert s.sign_in("alice", PASSWORD)[1] == "operator"


def test_sign_in_route_roles_counter_and_audit(accounts):
    s = sessions(accounts, Clock())
    with Rig(sessions=s) as rig:
        wrong, good, viewer = call(
            rig, ("POST", "/auth/signin", {"json": {"account": "alice", "password": "nope"}}),
            ("POST", "/auth/signin", {"json": {"account": "alice", "password": PASSWORD}}),
            ("POST", "/auth/signin", {"json": {"account": "victor",
                                               "password": PASSWORD + "!"}}))
        assert wrong.status_code == 401 and wrong.json() == {
            "detail": "wrong account name or password"}
        delta = take_replica_delta()
        failures = {ls: v for (n, ls), v in delta.counters.items()
                    if n == "reco_signin_failures_total"}
        assert failures == {(("status", "401"),): 1.0}
        rig.state.record(delta.as_payload())  # as a push would: /metrics renders it
        text = rig.state.render([])
        assert 'reco_signin_failures_total{status="401"} 1.0' in text
        body = good.json()
        assert good.status_code == 200 and body["role"] == "operator"
        assert list(body) == ["account", "role", "token", "expires_at"]
        op = {"headers": {"Authorization": f"Bearer {body['token']}"}}
        view = {"headers": {"Authorization": f"Bearer {viewer.json()['token']}"}}
        as_viewer, as_operator, forged = call(
            rig, ("POST", "/admin/split", {"json": {"split": 1.0}, **view}),
            ("POST", "/admin/split", {"json": {"split": 1.0}, **op}),
            ("POST", "/admin/split", {"json": {"split": 1.0},
                                      "headers": {"Authorization": "Bearer forged"}}))
        assert as_viewer.status_code == 403 and "user:victor" in as_viewer.json()["detail"]
        assert as_operator.status_code == 200 and forged.status_code == 401
        assert [(a, who) for a, who, _ in rig.audits] == [
            ("signin_failed", "user:alice"), ("signin", "user:alice"),
            ("signin", "user:victor"), ("split", "user:alice")]
        assert "nope" not in repr(rig.audits) and PASSWORD not in repr(rig.audits)


def test_sign_in_without_sessions_is_refused_with_503():
    with Rig() as rig:
        r, = call(rig, ("POST", "/auth/signin", {"json": {"account": "alice",
                                                           "password": PASSWORD}}))
        assert r.status_code == 503 and "not configured" in r.json()["detail"]
