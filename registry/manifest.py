"""The registry's records as frozen models: the signed manifest of a version, the aliases of a
variant and the gate's decision on a candidate.

The manifest is signed over its bytes as written (`Manifest.canonical`): sorted keys, compact
separators, the layout earlier versions were written in, so that they still verify and parse.
A version registered without training provenance or offline metrics (tests, benchmarks) stores
`{}` for them, read back as None.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
)

from backend.ml.results import FeedbackForecast, OfflineMetrics

ALIAS_NAMES = ("production", "candidate", "previous")


def canonical_json(obj: object) -> bytes:
    """The registry's JSON form: sorted keys, no spaces (what the signature covers)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class FileDigest(_Frozen):
    sha256: str
    bytes: int


class LakeProvenance(_Frozen):
    """The lake data a version was trained on: the table version per topic (`versions`: a
    retrain at these versions reads the same rows, `Lake.read_table(..., version=)`), the
    lake's location, how many data files, one digest over their paths (Delta data files
    are immutable and uniquely named; versions registered before the lake was a Delta
    table digested names and contents and have no `versions`), and the highest Kafka offset
    per topic and partition."""

    files: int
    files_sha256: str
    max_offsets: dict[str, dict[str, int]]
    # left out when unset, so manifests signed before they existed read back byte for byte
    versions: dict[str, int | None] | None = Field(None, exclude_if=lambda v: v is None)
    uri: str | None = Field(None, exclude_if=lambda v: v is None)


class Provenance(_Frozen):
    """Where a trained version comes from; `train_seconds` and `feedback_forecast` are added
    per variant by the retrain pipeline."""

    git_sha: str
    training_window: tuple[str, str]
    rows: int
    users: int
    quarantined_users: int
    lake: LakeProvenance
    libraries: dict[str, str]
    lockfile_sha256: str | None
    train_seconds: float | None = None
    feedback_forecast: FeedbackForecast | None = None


class Manifest(_Frozen):
    """What `manifest.json` of a version holds; trust it only as returned by `verify`."""

    variant: str
    version: str
    kind: str
    created_at: datetime
    files: dict[str, FileDigest]
    params: dict[str, JsonValue]
    metrics: OfflineMetrics | None = None
    provenance: Provenance | None = None

    @field_validator("metrics", "provenance", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == {} else value

    @field_serializer("metrics", "provenance", mode="wrap")
    def _none_is_empty(self, value: BaseModel | None,
                       handler: SerializerFunctionWrapHandler) -> Any:
        return {} if value is None else handler(value)

    @field_serializer("created_at")
    def _isoformat(self, value: datetime) -> str:
        return value.isoformat()

    def canonical(self) -> bytes:
        """The bytes that are written and signed."""
        return canonical_json(self.model_dump())


class Aliases(_Frozen):
    """A variant's named versions (the registry's `aliases/` document); unset aliases are
    left out on disk."""

    candidate: str | None = None
    previous: str | None = None
    production: str | None = None

    def named(self) -> dict[str, str]:
        """alias -> version for the aliases that are set, in name order (the JSON form)."""
        return {name: version for name, version in
                sorted(self.model_dump(exclude_none=True).items())}

    def get(self, alias: str) -> str | None:
        if alias not in ALIAS_NAMES:
            raise ValueError(f"unknown alias {alias!r}")
        version: str | None = getattr(self, alias)
        return version

    def tags(self, version: str) -> list[str]:
        """The aliases that point at `version`."""
        return [name for name, v in self.named().items() if v == version]


class Decision(_Frozen):
    """The gate's verdict on one registered candidate: appended to the variant's `decisions/`
    log and returned per variant by the retrain pipeline."""

    version: str
    promoted: bool
    reasons: list[str]
    metrics: OfflineMetrics
    forecast: FeedbackForecast | None
