"""Requests one part leaves in the store for another that polls it.

A "retrain now" from the console or the admin API is a file the scheduler reads on its next
tick (the API has no handle on the scheduler's job, and the request must outlive a restart of
either). One request at a time: asking again while one waits only updates who asked.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from backend.core.files import atomic_write


class RetrainRequest(BaseModel):
    model_config = ConfigDict(frozen=True)

    actor: str
    requested: float  # unix seconds


def request_retrain(path: Path, request: RetrainRequest) -> None:
    atomic_write(path, request.model_dump_json().encode())


def pending_retrain(path: Path) -> RetrainRequest | None:
    """The waiting request, if any (an unreadable one counts as none)."""
    try:
        return RetrainRequest.model_validate_json(path.read_bytes())
    except (FileNotFoundError, ValidationError):
        return None
