"""Console sessions: sign-in with an account's password, then a signed, expiring token.

The API checks the password (`registry.accounts`) and answers a token signed with the
session key (itsdangerous' timed serializer, HMAC-SHA256); the dashboard sends it as
`Authorization: Bearer <token>` so the admin API knows, and its audit trail names, the
person. A token names its account and is checked against the accounts file on every call,
so removing an account or changing its role takes effect at once. Failed sign-ins are
counted per account on this replica; past `signin_failures` within the window the account
is locked until the window has passed (429 with Retry-After).
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, TimestampSigner, URLSafeTimedSerializer

from backend.core.errors import RecoError
from backend.core.settings import ConsoleSettings, Settings
from backend.serving.auth import Principal
from registry import open_accounts
from registry.accounts import AccountStore

ROLE_OF = {"operator": "admin", "viewer": "viewer"}  # account role -> API role


def session_secret(path: Path) -> bytes:
    """The session key file's bytes, created (0600, random) by the first replica to need
    it; the others read the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    else:
        os.write(fd, secrets.token_urlsafe(48).encode())
        os.close(fd)
    secret = path.read_bytes().strip()
    if len(secret) < 32:  # a replica racing the writer: read again once it is complete
        time.sleep(0.1)
        secret = path.read_bytes().strip()
    return secret


class Sessions:
    def __init__(self, cfg: ConsoleSettings, accounts: AccountStore, secret: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.accounts = accounts
        timed = type("ClockSigner", (TimestampSigner,),
                     {"get_timestamp": lambda _self: int(clock())})
        self.signer = URLSafeTimedSerializer(secret, salt="reco-console-session", signer=timed)
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}

    def sign_in(self, name: str, password: str) -> tuple[str, str, datetime]:
        """(token, account role, expiry); RecoError 401 for a wrong name or password, 429
        while the account is locked."""
        now = self.clock()
        window = self.cfg.signin_window_minutes * 60
        recent = self.failures.setdefault(name, deque())
        while recent and recent[0] <= now - window:
            recent.popleft()
        if len(recent) >= self.cfg.signin_failures:
            wait = max(1, math.ceil(recent[0] + window - now))
            raise RecoError(f"too many failed sign-ins for {name}; try again later",
                            status_code=429, headers={"Retry-After": str(wait)})
        account = self.accounts.verify(name, password)
        if account is None:
            recent.append(now)
            raise RecoError("wrong account name or password", status_code=401)
        recent.clear()
        token = self.signer.dumps({"sub": account.name})
        expires = datetime.fromtimestamp(now, UTC) + timedelta(minutes=self.cfg.session_minutes)
        return token, account.role, expires

    def principal(self, token: str | None) -> Principal | None:
        """The account behind a valid, unexpired token, as the API's principal."""
        if not token:
            return None
        try:
            payload = self.signer.loads(token, max_age=int(self.cfg.session_minutes * 60))
        except BadSignature:  # SignatureExpired is one
            return None
        account = self.accounts.accounts().get(str(payload.get("sub")))
        if account is None:
            return None
        return Principal(account.name, ROLE_OF[account.role], kind="user")


def open_sessions(settings: Settings) -> Sessions:
    """Sessions over the settings' accounts, signed with `var/keys/session.key`."""
    assert settings.registry.keys_dir is not None
    return Sessions(settings.console, open_accounts(settings),
                    session_secret(settings.registry.keys_dir / "session.key"))
