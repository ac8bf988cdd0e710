"""API keys: stored as SHA-256 digests, compared in constant time, never logged.

A presented key is hashed once and compared with every configured digest through
`hmac.compare_digest`, without stopping at the first match, so the time taken does not say
which key (if any) matched.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ROLES = ("client", "admin")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


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
