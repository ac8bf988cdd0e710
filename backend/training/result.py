"""What the training layer reports: a retrain's decision per variant (the JSON the retrain job
writes with `--result`, read by the scheduler) and `reco evaluate`'s scored models."""

from __future__ import annotations

from collections.abc import ItemsView

from pydantic import BaseModel, ConfigDict, RootModel

from backend.ml.results import OfflineMetrics
from registry.manifest import Decision


class RetrainResult(RootModel[dict[str, Decision]]):
    """variant -> the gate's decision on the version this retrain registered."""

    model_config = ConfigDict(frozen=True)

    def items(self) -> ItemsView[str, Decision]:
        return self.root.items()

    def __getitem__(self, variant: str) -> Decision:
        return self.root[variant]


class Scored(BaseModel):
    """One model's offline metrics on the lake's temporal split, under a display name."""

    model_config = ConfigDict(frozen=True)

    name: str
    metrics: OfflineMetrics
