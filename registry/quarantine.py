"""The spam quarantine as records: who is held out of training, since when, on what evidence,
and who released or re-flagged them.

The analytics cycle quarantines the users its combined spam flag marks, with each one's
detector scores as evidence. An operator reviews the list, releases a user (their events
count again from the next retrain) or flags one by hand; both are operator actions in the
audit trail. A released user is quarantined again automatically only on evidence gathered
after the release (a window that starts after it), so the next cycle does not undo the
operator's decision on the same ratings.

One document in the shared store (`analytics/quarantine/`, a `Document`: each edit commits
the next version only if no other writer, the cycle or an ingress replica on any node,
committed meanwhile); it keeps the older readers' `users` list of the quarantined ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, JsonValue, computed_field, model_validator

from backend.core.errors import RecoError
from backend.core.layout import Keys
from backend.core.store import Document, Store

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


T = TypeVar("T")


class QuarantineStore:
    """The quarantine document. Releases and manual flags are operator actions: their callers
    (the admin API, the CLI) audit them once they have taken effect."""

    def __init__(self, store: Store, prefix: str = Keys.quarantine) -> None:
        self.doc = Document(store, prefix)

    def read(self) -> Quarantine:
        data = self.doc.read()
        return Quarantine() if data is None else Quarantine.model_validate(data)

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

        def change(entries: dict[int, QuarantineEntry]) -> list[int]:
            added = []
            for user, scores in evidence.items():
                old = entries.get(user)
                if old is not None and (old.status == "quarantined" or (
                        old.released_at is not None and old.released_at >= window_start)):
                    continue
                entries[user] = QuarantineEntry(user_id=user, status="quarantined", since=now,
                                                source="detector", evidence=scores)
                added.append(user)
            return added

        return self._edit(change) if evidence else []

    def release(self, user: int, actor: str, reason: str | None = None) -> QuarantineEntry:
        """An operator lets the user's events count again (from the next retrain)."""
        def change(entries: dict[int, QuarantineEntry]) -> QuarantineEntry:
            old = entries.get(user)
            if old is None or old.status != "quarantined":
                raise QuarantineError(f"user {user} is not quarantined", status_code=404)
            entries[user] = old.model_copy(update={
                "status": "released", "actor": actor, "reason": reason,
                "released_at": datetime.now(UTC)})
            return entries[user]

        return self._edit(change)

    def flag(self, user: int, actor: str, reason: str) -> QuarantineEntry:
        """An operator quarantines a user by hand (a re-flag after a release, or a report)."""
        def change(entries: dict[int, QuarantineEntry]) -> QuarantineEntry:
            old = entries.get(user)
            if old is not None and old.status == "quarantined":
                raise QuarantineError(f"user {user} is quarantined already")
            entries[user] = QuarantineEntry(
                user_id=user, status="quarantined", since=datetime.now(UTC), source="operator",
                reason=reason, actor=actor, evidence=dict(old.evidence) if old else {})
            return entries[user]

        return self._edit(change)

    def _edit(self, change: Callable[[dict[int, QuarantineEntry]], T]) -> T:
        """Apply `change` to the entries (in place) and commit them as the next version; on a
        race with another writer, `change` runs again on what that writer left."""
        out: list[T] = []

        def on_doc(data: Any | None) -> Any:
            entries = dict((Quarantine() if data is None
                            else Quarantine.model_validate(data)).entries)
            before = dict(entries)
            out[:] = [change(entries)]
            if entries == before:
                return None  # nothing changed: no new version
            return Quarantine(updated=datetime.now(UTC), entries=entries).model_dump(mode="json")

        self.doc.edit(on_doc)
        return out[0]
