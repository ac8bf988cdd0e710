"""The spam quarantine as records: who is held out of training, since when, on what evidence,
and who released or re-flagged them.

The analytics cycle quarantines the users its combined spam flag marks, with each one's
detector scores as evidence. An operator reviews the list, releases a user (their events
count again from the next retrain) or flags one by hand; both are operator actions in the
audit trail. A released user is quarantined again automatically only on evidence gathered
after the release (a window that starts after it), so the next cycle does not undo the
operator's decision on the same ratings.

One JSON file (`var/analytics/quarantine.json`), rewritten atomically under an exclusive lock
(the cycle and several ingress replicas write it); it keeps the older readers' `users` list
of the quarantined ids.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, JsonValue, computed_field, model_validator

from backend.core.errors import RecoError
from backend.core.files import atomic_write

Status = Literal["quarantined", "released"]


class QuarantineError(RecoError):
    """A refused change: the user is not in the quarantine (404) or already where asked."""

    status_code = 409


class QuarantineEntry(BaseModel):
    """One user's quarantine record."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: int
    status: Status
    since: datetime  # quarantined (or re-flagged) at
    source: Literal["detector", "operator"]
    evidence: dict[str, JsonValue] = {}  # the detectors' scores when flagged
    reason: str | None = None  # an operator's, for a manual flag or a release
    actor: str | None = None  # who flagged by hand or released
    released_at: datetime | None = None

    @property
    def why(self) -> str:
        """The operator's reason, or the detectors that flagged the user ("" if neither)."""
        detectors = self.evidence.get("detectors")
        if self.reason:
            return self.reason
        return ",".join(map(str, detectors)) if isinstance(detectors, list) else ""


class Quarantine(BaseModel):
    """The whole quarantine; `users` (the quarantined ids) is derived, kept for readers of the
    file's first shape."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    updated: datetime | None = None
    entries: dict[int, QuarantineEntry] = {}

    @model_validator(mode="before")
    @classmethod
    def _from_first_shape(cls, data: object) -> object:
        """A file of the first shape held only `users` (detector flags, no evidence)."""
        if isinstance(data, dict) and "entries" not in data:
            since = data.get("updated")
            try:
                since = datetime.strptime(str(since), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            except ValueError:
                since = datetime.fromtimestamp(0, UTC)
            data = {"updated": since, "entries": {
                int(u): {"user_id": int(u), "status": "quarantined", "since": since,
                         "source": "detector"} for u in data.get("users", [])}}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def users(self) -> list[int]:
        return sorted(u for u, e in self.entries.items() if e.status == "quarantined")


class QuarantineStore:
    """The quarantine file. Releases and manual flags are operator actions: their callers
    (the admin API, the CLI) audit them once they have taken effect."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> Quarantine:
        if not self.path.exists():
            return Quarantine()
        return Quarantine.model_validate_json(self.path.read_bytes())

    def held(self) -> set[int]:
        """The users training leaves out."""
        return set(self.read().users)

    def flag_detected(self, evidence: Mapping[int, dict[str, JsonValue]],
                      window_start: datetime) -> list[int]:
        """Quarantine the users the detectors flagged over a window starting at
        `window_start`, with their evidence; returns the newly quarantined. Users already
        quarantined keep their first evidence; released users come back only when the window
        starts after their release."""
        now = datetime.now(UTC)
        added = []
        with self._editing() as entries:
            for user, scores in evidence.items():
                old = entries.get(user)
                if old is not None and (old.status == "quarantined" or (
                        old.released_at is not None and old.released_at >= window_start)):
                    continue
                entries[user] = QuarantineEntry(user_id=user, status="quarantined", since=now,
                                                source="detector", evidence=scores)
                added.append(user)
        return added

    def release(self, user: int, actor: str, reason: str | None = None) -> QuarantineEntry:
        """An operator lets the user's events count again (from the next retrain)."""
        with self._editing() as entries:
            old = entries.get(user)
            if old is None or old.status != "quarantined":
                raise QuarantineError(f"user {user} is not quarantined", status_code=404)
            entry = old.model_copy(update={"status": "released", "actor": actor,
                                           "reason": reason, "released_at": datetime.now(UTC)})
            entries[user] = entry
        return entry

    def flag(self, user: int, actor: str, reason: str) -> QuarantineEntry:
        """An operator quarantines a user by hand (a re-flag after a release, or a report)."""
        with self._editing() as entries:
            old = entries.get(user)
            if old is not None and old.status == "quarantined":
                raise QuarantineError(f"user {user} is quarantined already")
            entry = QuarantineEntry(user_id=user, status="quarantined", since=datetime.now(UTC),
                                    source="operator", reason=reason, actor=actor,
                                    evidence=dict(old.evidence) if old else {})
            entries[user] = entry
        return entry

    @contextmanager
    def _editing(self) -> Iterator[dict[int, QuarantineEntry]]:
        """The entries to change in place, under an exclusive lock; written back atomically
        when the block ends without an error."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = dict(self.read().entries)
            yield entries
            body = Quarantine(updated=datetime.now(UTC), entries=entries)
            atomic_write(self.path, body.model_dump_json(indent=1).encode())
        finally:
            os.close(fd)
