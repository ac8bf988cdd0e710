"""The HTTP API's request and response models, the application builder's arguments, and the
records the deployments exchange.

The response models document (in the OpenAPI schema) and type what the handlers return; each
serialises to exactly the JSON the API answered with before they existed, so their fields
keep those names, that order and those value types (`float | int` where a knob may be
either and its JSON keeps what it was given).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypedDict

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SecretStr,
    StrictFloat,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from backend.core.numbers import JSON_INTEGER
from registry.experiments import ArmSpec, AuditEvent, Experiment, Weights

Knob = float | int  # an int stays an int in JSON, a float a float


class ErrorBody(BaseModel):
    """Every 4xx: a message, or FastAPI's list of field errors for request validation."""

    detail: str | list[dict[str, Any]]


class AppArgs(BaseModel):
    """What `build_app` needs; everything else comes from `Settings` in the replicas."""

    split: float = Field(0.5, ge=0, le=1)
    salt: str = "exp-1"
    b_runtime: dict[str, float] = {}
    ingress_replicas: int = Field(1, ge=1)


# -- requests -------------------------------------------------------------------------------

class RollbackRequest(BaseModel):
    variant: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")


class PromoteRequest(RollbackRequest):
    version: str = Field(pattern=r"^v\d{1,8}$")


class Change(BaseModel):
    """A change of some settings: at least one field given and none null (leave a field out
    to keep it); the schema states both (minProperties, no null type)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})

    @model_validator(mode="before")
    @classmethod
    def _given(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data:
                raise ValueError(f"give at least one of {', '.join(cls.model_fields)}")
            nulls = sorted(k for k, v in data.items() if v is None)
            if nulls:
                raise ValueError(f"{nulls[0]} may not be null: leave it out to keep it")
        return data


class SplitRequest(Change):
    """The default allocation: the first variant's share and the assignment salt."""

    split: Annotated[StrictFloat, Field(ge=0, le=1)] | SkipJsonSchema[None] = None
    salt: Annotated[str, Field(min_length=1, max_length=64)] | SkipJsonSchema[None] = None


class DiversityRequest(Change):
    """Model B's run-time strengths (see DiversityKNN)."""

    mmr_lambda: Annotated[StrictFloat, Field(ge=0, le=1)] | SkipJsonSchema[None] = None
    exploration: Annotated[StrictFloat, Field(ge=0, le=5)] | SkipJsonSchema[None] = None
    tail_slots: Annotated[int, Field(ge=0, le=100), JSON_INTEGER] | SkipJsonSchema[None] = None


class ReleaseRequest(BaseModel):
    """Why the user is let out of the quarantine (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, min_length=1, max_length=500)


class SignInRequest(BaseModel):
    """A console account's name and password."""

    model_config = ConfigDict(extra="forbid")
    account: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,31}$")
    password: SecretStr = Field(min_length=1, max_length=256)


class SignedIn(BaseModel):
    """A console session: send `token` as `Authorization: Bearer <token>` until `expires_at`."""

    account: str
    role: Literal["viewer", "operator"]
    token: str
    expires_at: datetime


class FlagRequest(BaseModel):
    """Why the user is quarantined by hand."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500)


class DeadLetterFilter(BaseModel):
    """Which dead letters: from one source topic, with an error containing a text (both
    optional: none means all)."""

    model_config = ConfigDict(extra="forbid")
    topic: Literal["events.rating", "events.watch", "events.reco"] | None = None
    contains: str | None = Field(None, min_length=1, max_length=200)


class RetrainRequestBody(BaseModel):
    """Why a retrain is asked for now (kept in the audit trail)."""

    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(None, min_length=1, max_length=500)


# -- responses ------------------------------------------------------------------------------

class Replayed(BaseModel):
    """Dead letters produced back to their source topics; the ingest job validates them
    again (valid ones land once, by event_id; the rest are dead-lettered again)."""

    replayed: int


class RetrainRequested(BaseModel):
    """A retrain the scheduler submits on its next tick (after the running one, if any);
    its progress and outcome appear in the scheduler's runs."""

    actor: str
    requested: datetime

class RecommendedItem(BaseModel):
    item_id: int
    title: str | None


class RecommendResponse(BaseModel):
    """`GET /recommend`: the ranked items with their titles (null without a data cache)."""

    request_id: str
    user_id: int
    variant: str
    model_version: str
    items: list[RecommendedItem]


class Accepted(BaseModel):
    """`POST /rate`, `POST /watch`: the event is on disk in the replica's write-ahead log,
    on its way to Kafka, and stays in the log until the lake holds its `event_id`."""

    event_id: str
    status: Literal["accepted"] = "accepted"


class VariantStatus(BaseModel):
    """One variant as served: its version, the versions it refused and why, its knobs."""

    variant: str
    version: str | None
    refused: dict[str, str]
    runtime: dict[str, Knob]


class HealthResponse(BaseModel):
    """`split` (the first arm's share) only while two arms are allocated; `weights` always.
    `experiment` and `epoch`: what the users are assigned under (null: none running)."""

    status: Literal["ok", "degraded"]
    variants: dict[str, VariantStatus]
    broker_degraded: bool
    spool_depth: int  # events waiting for the broker in the replicas' write-ahead logs
    wal_pending: int = 0  # accepted writes the lake does not hold yet (normal: seconds' worth)
    split: float | None
    salt: str
    weights: dict[str, float] = {}
    experiment: str | None = None
    epoch: int | None = None


class VariantVersions(BaseModel):
    aliases: dict[str, str]
    versions: list[str]


class ModelsResponse(RootModel[dict[str, VariantVersions]]):
    """`GET /models`: per variant, its aliases (production, previous) and versions."""


class AliasesResponse(RootModel[dict[str, str]]):
    """`POST /admin/promote`, `POST /admin/rollback`: the variant's aliases afterwards."""


class RuntimeKnobs(RootModel[dict[str, Knob]]):
    """`POST /admin/diversity`: Model B's run-time strengths now in force."""


class SplitResponse(BaseModel):
    """`POST /admin/split`: the default allocation now (split null with one variant)."""

    split: float | None
    salt: str


class WeightsRequest(BaseModel):
    """`POST /admin/experiments/{id}/weights`: every arm's weight (a new allocation epoch,
    unless they are the weights in force)."""

    weights: Weights


class AddArmRequest(BaseModel):
    """`POST /admin/experiments/{id}/arms`: a deployed variant joins with `weight`."""

    model_config = ConfigDict(extra="forbid")
    arm: ArmSpec
    weight: StrictFloat = Field(gt=0, le=1e6)


class ExperimentView(BaseModel):
    """An experiment as its audit trail leaves it, and that trail."""

    experiment: Experiment
    events: list[AuditEvent]


class ExperimentsResponse(RootModel[dict[str, Experiment]]):
    """`GET /admin/experiments`: every experiment by id, oldest first."""


# -- between deployments: plain dicts on the wire (deployments.py dumps and validates) -------

class Allocation(BaseModel):
    """Who serves whom: the arms in order with their weights, the salt, and the experiment
    and epoch it belongs to (None: the default allocation, no experiment running)."""

    model_config = ConfigDict(frozen=True)

    weights: dict[str, float]
    salt: str
    experiment: str | None = None
    epoch: int | None = None
    revision: int = -1  # the audit log's line the allocation follows from (-1: none)

    @property
    def split(self) -> float | None:
        """The first arm's share, with exactly two arms (what `/health` always reported)."""
        if len(self.weights) != 2:
            return None
        first, total = next(iter(self.weights.values())), sum(self.weights.values())
        return first / total if total > 0 else None


class SharedExperiment(BaseModel):
    """What every replica follows (ServingState's config): the allocation in force, the
    default one (for when no experiment runs) and the run-time knobs; `generation` counts
    changes, so a replica applies each one once."""

    model_config = ConfigDict(frozen=True)

    allocation: Allocation
    default: Allocation
    b_runtime: dict[str, Knob] = {}
    generation: int = 0


class WritesHealth(BaseModel):
    """Events waiting for the broker, degraded replicas and accepted writes not yet in the
    lake, summed over the live replicas."""

    spool_depth: int = 0
    degraded_replicas: int = 0
    wal_pending: int = 0


class VariantAnswer(TypedDict):
    """A variant's answer to one (user_id, k): a TypedDict, not a model, as it is made once
    per request on the hot path."""

    items: list[int]
    variant: str
    model_version: str
    model_ms: float


class AnsweredRequest(VariantAnswer):
    """The ingress's answer before titles: the variant's, with the request's identity."""

    request_id: str
    user_id: int
