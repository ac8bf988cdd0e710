"""What offline evaluation and the feedback-loop forecast report about a candidate model.

Both go into the signed registry manifest and the gate's decision record, so they are frozen
models with a fixed set of fields; their JSON form is the one earlier manifests were written in
(keys sorted by the writer, floats as Python writes them, NaN where a metric is undefined).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class OfflineMetrics(BaseModel):
    """Accuracy and beyond-accuracy metrics at cut-off `k` on the temporal split's test users."""

    model_config = ConfigDict(frozen=True)

    k: int
    users: int
    ndcg: float
    recall: float
    map: float
    coverage: float
    gini: float
    novelty: float
    ild: float  # NaN when the model has no item features
    aplt: float


class FeedbackForecast(BaseModel):
    """The exposure-Gini slope forecast over simulated retrain cycles (`backend.ml.forecast`)."""

    model_config = ConfigDict(frozen=True)

    steps: int
    visits_per_step: int
    gini: list[float]
    slope: float
    ci_low: float
    ci_high: float
    limit: float
    exceeds: bool
