"""Experiments as records: an append-only audit log is the source of truth, and an
experiment's state (arms, weights, allocation epochs, stop) is the fold of its events.

Every change is an event with its actor (the key or account behind the admin call), when and
what: starting an experiment, setting its weights, adding an arm, stopping it, and the
operator actions that touch it from outside (a promotion, a split change through the admin
API). Changing the weights or the arms opens a new allocation epoch: users are assigned with
other weights from then on, so the analysis reads each epoch's users against that epoch's
weights and never pools epochs as if one allocation had held throughout.

Records live in the shared store under `registry/experiments/audit/`, one object per event
(a `RecordLog`): a change reads the log, checks, and commits only if no other writer (an
ingress replica on another node, the CLI, the retrain job) committed meanwhile, else it reads
and checks again.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictFloat,
    ValidationError,
)

from backend.core.errors import RecoError
from backend.core.layout import Keys
from backend.core.store import Store

Action = Literal["start", "set_weights", "add_arm", "stop", "promote", "rollback", "split",
                 "diversity", "release", "quarantine", "signin", "signin_failed",
                 "account_add", "account_remove", "dlq_replay", "retrain"]
OperatorAction = Literal["promote", "rollback", "split", "diversity", "release", "quarantine",
                         "signin", "signin_failed", "account_add", "account_remove",
                         "dlq_replay", "retrain"]
# the operator actions that change what a running experiment serves, audited under it
SERVING_ACTIONS = frozenset({"promote", "rollback", "split", "diversity"})
NAME = r"^[A-Za-z0-9_-]{1,32}$"
log = logging.getLogger(__name__)


class ExperimentError(RecoError):
    """A refused change: unknown experiment (404), a conflict with its state (409), or a
    malformed one (422)."""

    status_code = 409


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArmSpec(_Frozen):
    """An arm: a registry variant, at a pinned version or (None) its production alias."""

    variant: str = Field(pattern=NAME)
    version: str | None = Field(None, pattern=r"^v\d{1,8}$")


GuardrailMetric = Literal["latency_p95_ms", "error_rate", "watch_through", "mean_rating",
                          "coverage", "gini", "top10_share", "exposure_gini"]


class Guardrail(_Frozen):
    """A metric an arm must keep within bounds to win (e.g. latency_p95_ms <= 100)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    metric: GuardrailMetric
    max: StrictFloat | None = None
    min: StrictFloat | None = None


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    bad = [name for name in weights if not re.fullmatch(NAME, name)]
    if bad:
        raise ValueError(f"weight names must match {NAME}: {bad[0]!r} does not")
    values = list(weights.values())
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or \
            not 0 < sum(values) < math.inf:
        raise ValueError("weights must be finite and non-negative with a positive sum")
    return dict(weights)


# per arm variant, relative (normalised on use); the schema states every rule: named like a
# variant, 0..1e6, at least one, and not all zero ("not every weight is at most 0")
# (names as propertyNames, not pydantic's patternProperties: a generator cannot combine those
# with the `not`)
Weights = Annotated[
    dict[str, Annotated[StrictFloat, Field(ge=0, le=1e6)]],
    AfterValidator(check_weights),
    Field(json_schema_extra={"minProperties": 1, "propertyNames": {"pattern": NAME},
                             "not": {"additionalProperties": {"maximum": 0}}})]


class ExperimentSpec(_Frozen):
    """What starting an experiment fixes. Three rules across fields no JSON Schema states,
    refused with 422 and the reason: each variant is one arm, the control is one of them,
    and `weights` names exactly the arms."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    id: str = Field(pattern=NAME)
    arms: list[ArmSpec] = Field(min_length=2)
    control: str = Field(pattern=NAME)
    salt: str = Field(min_length=1, max_length=64)
    weights: Weights
    primary_metric: Literal["watch_through"] = "watch_through"
    guardrails: list[Guardrail] = []


class AuditEvent(_Frozen):
    """One line of the audit log."""

    ts: datetime
    actor: str
    action: Action
    experiment: str | None = None
    detail: dict[str, JsonValue] = {}


class Epoch(_Frozen):
    """A stretch of an experiment under one allocation."""

    number: int
    start: datetime
    weights: dict[str, float]


class Experiment(_Frozen):
    """An experiment's state, folded from its events."""

    spec: ExperimentSpec
    start: datetime
    stop: datetime | None = None
    epochs: list[Epoch]
    revision: int = 0  # the audit log's line (0-based) of its latest event: orders changes

    @property
    def running(self) -> bool:
        return self.stop is None

    @property
    def epoch(self) -> Epoch:
        return self.epochs[-1]

    def weights_at(self, ts: datetime) -> Epoch:
        """The epoch in force at `ts` (the first one before the experiment started)."""
        current = self.epochs[0]
        for e in self.epochs:
            if e.start <= ts:
                current = e
        return current


class ExperimentStore:
    """The audit log and the experiments it records."""

    def __init__(self, store: Store, prefix: str = Keys.audit) -> None:
        self.log = store.log(prefix)  # the process's one reader of it: read once, then new

    # -- reading -------------------------------------------------------------------------

    def events(self, experiment: str | None = None) -> list[AuditEvent]:
        """The audit trail, oldest first (one experiment's, or everything)."""
        return _parse(self.log.read(), experiment)

    def experiments(self) -> dict[str, Experiment]:
        return fold(self.events())

    def get(self, experiment: str) -> Experiment:
        return _find(self.experiments(), experiment)

    def running(self) -> Experiment | None:
        """The experiment serving now, if any (at most one runs at a time)."""
        return _running(self.experiments())

    # -- changes: each reads, checks and commits only if no one committed meanwhile ------

    def start(self, spec: ExperimentSpec, actor: str) -> Experiment:
        def decide(now: dict[str, Experiment]) -> AuditEvent:
            if spec.id in now:
                raise ExperimentError(f"experiment {spec.id!r} exists (ids are never reused)")
            live = _running(now)
            if live is not None:
                raise ExperimentError(f"experiment {live.spec.id!r} is running: stop it first")
            used = {e.spec.salt: e.spec.id for e in now.values()}
            if spec.salt in used:  # its users' past under that salt would carry over
                raise ExperimentError(f"salt {spec.salt!r} was experiment {used[spec.salt]!r}'s:"
                                      " a new experiment draws its users afresh")
            _check_arms(spec.arms, spec.weights, spec.control)
            return _event(actor, "start", spec.id, {"spec": spec.model_dump(mode="json")})

        self._commit(decide)
        return self.get(spec.id)

    def set_weights(self, experiment: str, weights: dict[str, float], actor: str) -> Experiment:
        try:
            weights = check_weights(weights)
        except ValueError as exc:
            raise ExperimentError(str(exc), status_code=422) from None

        def decide(now: dict[str, Experiment]) -> AuditEvent | None:
            exp = _live(now, experiment)
            names = sorted(a.variant for a in exp.spec.arms)
            if sorted(weights) != names:  # 409: the experiment's arms are its state
                raise ExperimentError(f"weights must name exactly {experiment}'s arms {names}")
            if weights == exp.epoch.weights:  # in force already: no new epoch (a retry)
                return None
            detail: dict[str, JsonValue] = {k: v for k, v in weights.items()}
            return _event(actor, "set_weights", experiment, {"weights": detail})

        self._commit(decide)
        return self.get(experiment)

    def add_arm(self, experiment: str, arm: ArmSpec, weight: float, actor: str) -> Experiment:
        if weight <= 0:
            raise ExperimentError("a new arm needs a positive weight", status_code=422)

        def decide(now: dict[str, Experiment]) -> AuditEvent:
            exp = _live(now, experiment)
            if any(a.variant == arm.variant for a in exp.spec.arms):
                raise ExperimentError(f"{arm.variant} is already an arm of {experiment}")
            return _event(actor, "add_arm", experiment,
                          {"arm": arm.model_dump(mode="json"), "weight": weight})

        self._commit(decide)
        return self.get(experiment)

    def stop(self, experiment: str, actor: str) -> Experiment:
        def decide(now: dict[str, Experiment]) -> AuditEvent:
            _live(now, experiment)
            return _event(actor, "stop", experiment, {})

        self._commit(decide)
        return self.get(experiment)

    def check_unpinned(self, variant: str, version: str | None) -> None:
        """Refuses (409) to move `variant`'s production off the version the running
        experiment pins (`version` None: a rollback, to whatever was before)."""
        running = self.running()
        if running is None:
            return
        for arm in running.spec.arms:
            if arm.variant == variant and arm.version not in (None, version):
                raise ExperimentError(f"experiment {running.spec.id!r} pins {variant} at "
                                      f"{arm.version}: stop it first")

    def record(self, action: OperatorAction, actor: str, detail: dict[str, JsonValue]
               ) -> AuditEvent:
        """An operator action from outside the experiment's own changes: one that changes what
        is served (promote, rollback, split, diversity) under the running experiment, if
        any; the others (a quarantine release or flag) under none."""
        def decide(now: dict[str, Experiment]) -> AuditEvent:
            live = _running(now) if action in SERVING_ACTIONS else None
            return _event(actor, action, live.spec.id if live else None, detail)

        event = self._commit(decide)
        assert event is not None
        return event

    def _commit(self, decide: Callable[[dict[str, Experiment]], AuditEvent | None]
                ) -> AuditEvent | None:
        """`decide` on the experiments as the log holds them, committed as the next record
        only if the log is still as read (else decided again on what it holds then)."""
        made: list[AuditEvent] = []

        def on_records(records: list[Any]) -> Any:
            made.clear()
            event = decide(fold(_parse(records, None)))
            if event is None:
                return None
            made.append(event)
            return event.model_dump(mode="json")

        return made[0] if self.log.commit(on_records) is not None else None


def _event(actor: str, action: Action, experiment: str | None,
           detail: dict[str, JsonValue]) -> AuditEvent:
    return AuditEvent(ts=datetime.now(UTC), actor=actor, action=action, experiment=experiment,
                      detail=detail)


def _parse(records: list[Any], experiment: str | None) -> list[AuditEvent]:
    out = []
    for record in records:
        try:
            event = AuditEvent.model_validate(record)
        except ValidationError:  # a record this version cannot read: say so, skip it
            log.warning("audit record unreadable record=%.200s", record)
            continue
        if experiment is None or event.experiment == experiment:
            out.append(event)
    return out


def _find(experiments: dict[str, Experiment], experiment: str) -> Experiment:
    found = experiments.get(experiment)
    if found is None:
        raise ExperimentError(f"no experiment {experiment!r}", status_code=404)
    return found


def _running(experiments: dict[str, Experiment]) -> Experiment | None:
    return next((e for e in experiments.values() if e.running), None)


def _live(experiments: dict[str, Experiment], experiment: str) -> Experiment:
    exp = _find(experiments, experiment)
    if not exp.running:
        raise ExperimentError(f"experiment {experiment!r} has stopped")
    return exp


def _check_arms(arms: list[ArmSpec], weights: dict[str, float], control: str) -> None:
    names = [a.variant for a in arms]
    if len(set(names)) != len(names):
        raise ExperimentError("an arm is listed twice", status_code=422)
    if control not in names:
        raise ExperimentError(f"control {control!r} is not an arm", status_code=422)
    if set(weights) != set(names):
        raise ExperimentError(f"weights must name exactly the arms {sorted(names)}",
                              status_code=422)


def fold(events: list[AuditEvent]) -> dict[str, Experiment]:
    """Experiments as their events leave them. An event that cannot apply (an unknown
    experiment, a malformed detail written by hand) changes nothing and is logged: one bad
    line must not stop every later change."""
    out: dict[str, Experiment] = {}
    for line, ev in enumerate(events):
        try:
            _apply(out, ev)
            if ev.experiment in out and ev.action in ("start", "set_weights", "add_arm",
                                                      "stop"):
                out[ev.experiment] = out[ev.experiment].model_copy(update={"revision": line})
        except (KeyError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            log.warning("audit event skipped ts=%s action=%s experiment=%s error=%s",
                        ev.ts.isoformat(), ev.action, ev.experiment, exc)
    return out


def _apply(out: dict[str, Experiment], ev: AuditEvent) -> None:
    exp = out.get(ev.experiment or "")
    if ev.action == "start":
        spec = ExperimentSpec.model_validate(ev.detail["spec"])
        out[spec.id] = Experiment(spec=spec, start=ev.ts, epochs=[
            Epoch(number=0, start=ev.ts, weights=spec.weights)])
    elif exp is None:
        return
    elif ev.action == "set_weights":
        weights = {str(k): _number(v) for k, v in _mapping(ev.detail["weights"]).items()}
        out[exp.spec.id] = _with_epoch(exp, ev.ts, weights)
    elif ev.action == "add_arm":
        arm = ArmSpec.model_validate(ev.detail["arm"])
        weights = exp.epoch.weights | {arm.variant: float(_number(ev.detail["weight"]))}
        spec = exp.spec.model_copy(update={"arms": [*exp.spec.arms, arm]})
        out[exp.spec.id] = _with_epoch(exp.model_copy(update={"spec": spec}), ev.ts,
                                       weights)
    elif ev.action == "stop":
        out[exp.spec.id] = exp.model_copy(update={"stop": ev.ts})


def _with_epoch(exp: Experiment, ts: datetime, weights: dict[str, float]) -> Experiment:
    epoch = Epoch(number=exp.epoch.number + 1, start=ts, weights=weights)
    return exp.model_copy(update={"epochs": [*exp.epochs, epoch]})


def _mapping(value: JsonValue) -> dict[str, JsonValue]:
    if not isinstance(value, dict):
        raise ValueError(f"expected an object, got {json.dumps(value)}")
    return value


def _number(value: JsonValue) -> float:
    if not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {json.dumps(value)}")
    return float(value)
