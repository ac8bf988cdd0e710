"""The analytics snapshot contract: one section model per figure family.

`AnalyticsLogic.snapshot` builds a `Snapshot`; the cycle writes `model_dump(mode="json")` to
`var/analytics/` and the scheduler's gauges and the dashboard read it back with
`Snapshot.model_validate_json`. A figure the window holds too little data for is None (the
"not enough data" of the pages), never NaN: `Figure` turns NaN and infinities into None.
Models ignore keys they do not know, so a newer writer does not break an older reader; the
one change of shape, the echo chamber's per-variant series now under `echo.variants`, is
read from older files too (see `Echo`).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _finite_or_none(value: object) -> object:
    """NaN and infinities are "not enough data" (None); anything else is validated as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


Figure = Annotated[float | None, BeforeValidator(_finite_or_none)]
"""A figure that may be missing: None when the window holds too little data for it."""

VariantName = str
"""A variant ("A", "B") or "all" (every response in the window)."""


class Section(BaseModel):
    """Base of every snapshot model: immutable, unknown keys ignored, JSON keys as written."""

    model_config = ConfigDict(frozen=True, extra="ignore", validate_by_name=True,
                              validate_by_alias=True, serialize_by_alias=True)


# -- window and counts -----------------------------------------------------------------------

class Window(Section):
    start: str  # UTC, as str(pd.Timestamp): "2024-03-01 11:00:00+00:00"
    end: str
    minutes: float


class Counts(Section):
    recommendations: int  # responses in the window
    recommended_items: int  # items over those responses
    watches: int
    ratings: int
    users: int  # users with a recommendation in the window
    catalog: int
    # minutes of the window with at least one recommendation (None: written before it was)
    traffic_minutes: int | None = None


# -- fairness ----------------------------------------------------------------------------------

class MinRequirement(Section):
    value: float
    min: float
    passed: bool = Field(validation_alias="pass", serialization_alias="pass")


class MaxRequirement(Section):
    value: float
    max: float
    passed: bool = Field(validation_alias="pass", serialization_alias="pass")


class Requirements(Section):
    coverage: MinRequirement  # catalog coverage >= min
    parity: MaxRequirement  # largest diversity parity gap < max

    def failed(self) -> list[str]:
        """Names of the requirements that fail (empty: every one holds)."""
        return [name for name, req in (("coverage", self.coverage), ("parity", self.parity))
                if not req.passed]


class Fairness(Section):
    """Exposure fairness of one variant's served lists."""

    coverage: float
    gini: float
    top10_share: float
    exposure_gini: float
    # position-weighted exposure's Lorenz curve at item shares 0, 0.05, ..., 1 (none: empty)
    exposure_lorenz: list[float] = []
    diversity: Figure  # mean intra-list diversity; None without lists of 2+ featured items
    diversity_by_segment: dict[str, dict[str, float]]  # dimension -> segment -> diversity
    parity_gap: dict[str, float]  # dimension -> max - min over its known segments
    requirements: Requirements


# -- long tail ---------------------------------------------------------------------------------

class GroupRates(Section):
    """Per popularity group (head, mid, tail): a share between 0 and 1."""

    head: float
    mid: float
    tail: float


class Tail(Section):
    """Head, mid and tail by popularity before the window (the training window): the share
    of each group's items recommended at least once, each group's share of the position-
    weighted exposure, and the head/tail ratio of the rates with its 95% interval; starved
    when the interval lies above the limit."""

    rates: GroupRates
    exposure_share: GroupRates | None = None  # None without recommendations
    head_tail_ratio: Figure  # None: `reason` says why (no tail item shown, no traffic)
    ratio_ci_low: Figure = None  # None without a ratio or without a shown head item
    ratio_ci_high: Figure = None
    starved: bool
    limit: float
    reason: str | None = None


# -- feedback loop / echo chamber --------------------------------------------------------------

class Trend(Section):
    """Least-squares slope per window with its 95% interval; `detected` when the interval's
    lower bound is above the limit. Too few windows with data: no slope, and `reason`."""

    slope: Figure
    ci_low: Figure
    ci_high: Figure
    windows: int
    detected: bool
    reason: str | None = None


class EchoSeries(Section):
    """One variant's feedback-loop figures per window, oldest first (None: a window with too
    little data). Concentration is rarefied: every window's Gini and top-10 share are the
    mean over repeated samples of `sample_size` of its recommended items (the same number
    per catalog item in every window), over the catalog as it was in that window; `*_sd`
    is their spread over the samples."""

    gini: list[Figure]
    top10_share: list[Figure]
    gini_trend: Trend
    top10_trend: Trend
    sample_size: list[int | None] = []  # recommended items per sample (None: too few)
    recommended: list[int] = []  # recommended items per window
    catalog: list[int] = []  # items released by the window's end
    gini_sd: list[Figure] = []
    top10_sd: list[Figure] = []
    exposure_gini: list[Figure] = []  # of the position-weighted (DCG) exposure, rarefied
    exposure_gini_trend: Trend | None = None
    raw_gini: list[Figure] = []  # every recommended item, not rarefied: falls with volume
    homogenization: list[Figure] = []  # mean Jaccard of user pairs' watches in the window
    homogenization_trend: Trend | None = None


class Echo(Section):
    """The feedback-loop section: concentration trends per variant, homogenisation (the
    last window's, from served traffic)."""

    windows: int
    variants: dict[VariantName, EchoSeries]
    homogenization: Figure
    homogenization_by_variant: dict[str, Figure]

    @model_validator(mode="before")
    @classmethod
    def _nest_legacy_variants(cls, data: Any) -> Any:
        """Snapshots written before the typed contract kept each variant's series next to
        `windows` and `homogenization` (`echo.A`); they now sit under `echo.variants`."""
        if isinstance(data, dict) and "variants" not in data:
            fixed = {"windows", "homogenization", "homogenization_by_variant"}
            data = {**{k: v for k, v in data.items() if k in fixed},
                    "variants": {k: v for k, v in data.items() if k not in fixed}}
        return data


# -- spam ----------------------------------------------------------------------------------

class SpamFlags(Section):
    """User ids each detector flags in the window; `combined` is what gets quarantined."""

    three_sigma: list[int] = Field(default_factory=list)
    robust_count: list[int] = Field(default_factory=list)
    robust_rdma: list[int] = Field(default_factory=list)
    robust_degsim: list[int] = Field(default_factory=list)
    robust_burst: list[int] = Field(default_factory=list)
    target: list[int] = Field(default_factory=list)  # rated a pushed (or nuked) item
    flood: list[int] = Field(default_factory=list)  # spam_flood ratings in one bucket
    combined: list[int] = Field(default_factory=list)

    def by_detector(self) -> list[tuple[str, list[int]]]:
        """(detector, flagged users) in the order above."""
        return [(name, list(getattr(self, name))) for name in type(self).model_fields]


class SpamUser(Section):
    user_id: int
    count: int
    rdma: float
    degsim: Figure  # None when DegSim was not computed for the user (a sampled window)
    burst: int
    pushed: int = 0  # pushed or nuked items the user rated at that value
    combined: bool


class Spam(Section):
    raters: int
    flagged: SpamFlags
    three_sigma_line: Figure  # mean + 3 std of ratings per user; None without raters
    # ratings per user above which robust_count flags (median + spam_z x MAD / 0.6745, or
    # its mean-absolute-deviation fallback); None when every rater posted as many
    robust_line: Figure = None
    # (ratings per user, raters with that many) over every rater of the window
    count_histogram: list[tuple[int, int]] = Field(default_factory=list)
    users: list[SpamUser]  # the loudest raters and every flagged one, most ratings first


# -- experiment (A/B) ----------------------------------------------------------------------

class Arm(Section):
    """One arm over its users: those it alone served in the window. Each user counts once
    (the unit randomised): intervals are over users, not slots."""

    requests: int
    users: int
    recommended_items: int  # to its users, by this arm
    watches: int  # by its users
    watch_through: Figure  # watches / recommended items over its users
    watch_through_ci: tuple[Figure, Figure]  # delta method, 95%; None under 2 users
    ratings: int
    mean_rating: Figure  # the mean of its raters' mean ratings
    mean_rating_ci: tuple[Figure, Figure]  # Student t over raters, 95%; None under 2


class LiftTest(Section):
    """The treatment less the control over users, fixed-horizon (Welch with the delta method
    for a ratio metric): absolute, and relative to the control. None throughout, with
    `reason`, where data is too thin."""

    metric: str = "watch-through"  # defaults: snapshots written before these fields
    diff: Figure = None
    ci_low: Figure = None
    ci_high: Figure = None
    relative: Figure = None
    relative_ci_low: Figure = None
    relative_ci_high: Figure = None
    p_value: Figure = None
    reason: str | None = None


class Cuped(Section):
    """The absolute watch-through lift (linearised) adjusted by each user's watches before
    the experiment (CUPED, one pooled theta), and the share of its variance removed."""

    diff: Figure = None
    ci_low: Figure = None
    ci_high: Figure = None
    p_value: Figure = None
    theta: Figure = None
    variance_reduction: Figure = None  # 1 - var(adjusted) / var(unadjusted), same users
    reason: str | None = None


class SampleRatio(Section):
    """Chi-square check of users per arm against the allocation in force."""

    chi2: Figure
    p_value: Figure
    mismatch: bool
    split: float | None = None  # the first arm's expected share, with two arms
    weights: dict[VariantName, float] = {}  # every arm's expected share
    reason: str | None = None  # why it was not checked, when it was not


class Sequential(Section):
    """Always-valid p-value (mSPRT / confidence sequence, lift.always_valid) of the relative
    watch-through lift over users, per look (the running minimum), and the running
    intersection of the confidence sequence (what every look so far allows)."""

    p_value: Figure
    series: list[Figure]
    ci_low: Figure = None
    ci_high: Figure = None


class BayesSummary(Section):
    """The relative watch-through lift's posterior (flat prior, as GrowthBook): the chance
    the treatment beats the control, and the expected loss of keeping the control (`risk_a`)
    or shipping the treatment (`risk_b`)."""

    chance_to_win: Figure
    risk_a: Figure
    risk_b: Figure


class Comparison(Section):
    """One treatment arm against the control."""

    watch_through_test: LiftTest
    rating_test: LiftTest
    cuped: Cuped
    sequential: Sequential
    bayes: BayesSummary
    rating_p_value: Figure = None  # always-valid, of the mean rating's difference
    holm: dict[str, Figure] = {}  # metric -> Holm-adjusted always-valid p (arms x metrics)


class GuardrailCheck(Section):
    """One arm's figure against a limit (a missing figure fails)."""

    arm: VariantName
    metric: str
    value: Figure
    max: float | None = None
    min: float | None = None
    passed: bool


class EpochSummary(Section):
    """One allocation epoch: its weights, the users who entered the experiment in it (the
    unit of its analysis) per arm, and the sample-ratio check of those users."""

    number: int
    start: str
    end: str | None  # None: the epoch in force
    weights: dict[VariantName, float]
    users: dict[VariantName, int]
    srm: SampleRatio


class Winner(Section):
    variant: str | None  # None: no winner yet, `reason` says why
    reason: str
    leader: str | None


class Experiment(Section):
    """The experiment section. With an experiment (`id`), over the users who entered it in
    its current epoch (`epoch`), from that epoch's start; without one, over the window's
    users under the default split. The tests need the control and a treatment (else
    none)."""

    arms: dict[VariantName, Arm]
    id: str | None = None
    epoch: int | None = None
    running: bool | None = None
    control: VariantName | None = None
    start: str | None = None  # of the span analysed
    end: str | None = None
    comparisons: dict[VariantName, Comparison] = {}
    epochs: list[EpochSummary] = []
    srm: SampleRatio | None = None
    guardrails: list[GuardrailCheck] = []
    winner: Winner | None = None


# -- SLA and drift -------------------------------------------------------------------------

class Latency(Section):
    p50: Figure
    p95: Figure
    p99: Figure


class Sla(Section):
    latency_ms: dict[VariantName, Latency]
    probes: int  # health probes in the window
    uptime: Figure  # None without probes
    error_rate: Figure


class VariantDrift(Section):
    """One variant's users in the window against the training window (None: too few events
    on either side for the PSI to tell a shift from noise; see `ops.psi_supported`)."""

    rating_psi: Figure
    popularity_psi: Figure
    ratings_now: int  # ratings in the window by the variant's users
    interactions_now: int  # watches and ratings in the window by the variant's users


class Drift(Section):
    """The window against everything before it ("the training window"): over all traffic,
    and per variant by the users it served (both variants train on the same lake)."""

    rating_psi: Figure
    popularity_psi: Figure
    rating_hist_train: list[int]  # ratings 1..5
    rating_hist_now: list[int]
    by_variant: dict[VariantName, VariantDrift] = {}


# -- the snapshot ----------------------------------------------------------------------------

class Snapshot(Section):
    """Every figure for the window [window.start, window.end)."""

    window: Window
    counts: Counts
    fairness: dict[VariantName, Fairness]
    tail: dict[VariantName, Tail]
    echo: Echo
    spam: Spam
    ab: Experiment
    sla: Sla
    drift: Drift
    compute_seconds: float | None = None  # set by the cycle that wrote it
