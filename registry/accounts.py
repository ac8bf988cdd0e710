"""Console accounts: who may sign in to the operations console, and as what.

A viewer sees every page; an operator also acts (split, promote, rollback, quarantine, ...),
and the API's audit trail names the operator's account. Passwords are kept as scrypt hashes
(RFC 7914, stdlib `hashlib.scrypt`, a random salt each) in one JSON file, 0600, beside the
API keys (`var/keys/accounts.json`); checks compare in constant time and hash a dummy for an
unknown name, so the time taken does not say whether the account exists.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.core.errors import RecoError
from backend.core.files import atomic_write

Role = Literal["viewer", "operator"]
ACCOUNT_NAME = r"^[a-z][a-z0-9_.-]{0,31}$"
MIN_PASSWORD = 12
SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # OWASP's minimum for scrypt (2023)


class AccountError(RecoError):
    """A refused account change (a name taken or unknown, a short password)."""

    status_code = 409


class Account(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=ACCOUNT_NAME)
    role: Role
    salt: str  # hex
    scrypt: str  # hex digest of the password under `salt` and SCRYPT's parameters
    created: datetime


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 2**20, dklen=32, **SCRYPT)


_DUMMY_SALT = secrets.token_bytes(16)


class AccountStore:
    """The accounts file; written atomically (0600), read on every check."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def accounts(self) -> dict[str, Account]:
        if not self.path.exists():
            return {}
        raw = json.loads(self.path.read_bytes())
        return {name: Account.model_validate(a) for name, a in raw.items()}

    def add(self, name: str, role: Role, password: str) -> Account:
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password needs at least {MIN_PASSWORD} characters",
                               status_code=422)
        accounts = self.accounts()
        if name in accounts:
            raise AccountError(f"account {name} exists")
        salt = secrets.token_bytes(16)
        account = Account(name=name, role=role, salt=salt.hex(),
                          scrypt=_hash(password, salt).hex(), created=datetime.now(UTC))
        self._write(accounts | {name: account})
        return account

    def remove(self, name: str) -> None:
        accounts = self.accounts()
        if name not in accounts:
            raise AccountError(f"no account {name}", status_code=404)
        del accounts[name]
        self._write(accounts)

    def verify(self, name: str, password: str) -> Account | None:
        """The account when the password is its own; None otherwise (same work either way)."""
        account = self.accounts().get(name)
        salt = bytes.fromhex(account.salt) if account else _DUMMY_SALT
        candidate = _hash(password, salt)
        stored = bytes.fromhex(account.scrypt) if account else secrets.token_bytes(32)
        return account if hmac.compare_digest(candidate, stored) and account else None

    def _write(self, accounts: dict[str, Account]) -> None:
        atomic_write(self.path, json.dumps(
            {n: a.model_dump(mode="json") for n, a in sorted(accounts.items())},
            indent=1).encode())
        os.chmod(self.path, 0o600)
