"""API keys: stored as SHA-256 digests, compared in constant time, never logged.

A presented key is hashed once and compared with every configured digest through
`hmac.compare_digest`, without stopping at the first match, so the time taken does not say
which key (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from backend.core.settings import ApiKeySpec, Settings

ROLES = ("client", "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # client, admin, or viewer (a console account that may not act)
    kind: str = "key"  # "key": an API key; "user": a console account's session

    @property
    def actor(self) -> str:
        """Who the audit trail names: `key:<name>` or `user:<account>`."""
        return f"{self.kind}:{self.name}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, keys: dict[str, tuple[str, str]]) -> None:
        """`keys`: name -> (sha256 hex digest of the key, role)."""
        for name, (hexdigest, role) in keys.items():
            if role not in ROLES:
                raise ValueError(f"key {name}: unknown role {role!r}")
            if len(hexdigest) != 64:
                raise ValueError(f"key {name}: expected a SHA-256 hex digest")
        self._keys = [(bytes.fromhex(h), Principal(n, r)) for n, (h, r) in keys.items()]

    def authenticate(self, presented: str | None) -> Principal | None:
        if not presented:
            return None
        candidate = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, principal in self._keys:
            if hmac.compare_digest(candidate, stored) and found is None:
                found = principal
        return found

    def allowed(self, principal: Principal | None, needs: str) -> bool:
        """Admins may do what clients may; nobody without a key may write."""
        if principal is None:
            return False
        return principal.role == "admin" or principal.role == needs


LOCAL_KEYS = {  # name -> (role, per-minute limit): the keys `reco up` makes for this machine
    "sim": ("client", 100_000.0),  # the simulator and the load generator
    "operator": ("admin", None),  # the dashboard's admin actions
}


def ensure_local_keys(settings: Settings) -> Settings:
    """Create `var/keys/<name>.key` (0600, random) for the local clients unless they exist,
    and return settings whose serve.api_keys also hold their digests (configured keys win)."""
    keys_dir = settings.registry.keys_dir
    assert keys_dir is not None  # Settings fills it in
    keys_dir.mkdir(parents=True, exist_ok=True)
    api_keys = dict(settings.serve.api_keys)
    for name, (role, per_minute) in LOCAL_KEYS.items():
        path = keys_dir / f"{name}.key"
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.write(fd, secrets.token_urlsafe(32).encode())
            os.close(fd)
        os.chmod(path, 0o600)
        api_keys.setdefault(name, ApiKeySpec(sha256=digest(path.read_text().strip()),
                                             role=role, per_minute=per_minute))
    serve = settings.serve.model_copy(update={"api_keys": api_keys})
    return settings.model_copy(update={"serve": serve})
