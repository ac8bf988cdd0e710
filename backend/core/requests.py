"""Requests one part leaves in the store for another that polls it.

A "retrain now" from the console or the admin API is an object in the shared store that the
scheduler reads on its next tick (the API has no handle on the scheduler's job, and the
request must outlive a restart of either). One request at a time: asking again while one
waits only updates who asked.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.core.layout import Keys
from backend.core.store import Store


class RetrainRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    actor: str
    requested: float  # unix seconds


def request_retrain(store: Store, request: RetrainRequest) -> None:
    store.put(Keys.retrain_request, request.model_dump_json().encode())


def pending_retrain(store: Store) -> RetrainRequest | None:
    """The waiting request, if any (an unreadable one counts as none)."""
    data = store.get(Keys.retrain_request)
    try:
        return None if data is None else RetrainRequest.model_validate_json(data)
    except ValidationError:
        return None


def answered_retrain(store: Store, request: RetrainRequest) -> None:
    """Remove the request once a retrain began after it, unless a newer one replaced it."""
    if pending_retrain(store) == request:
        store.delete(Keys.retrain_request)
