"""The training set of the lake, built one way for the retrain pipeline and `reco evaluate`:
ratings and watches (Ray Data when Ray is initialised) -> interactions without the quarantined
users -> the per-user temporal split, with the catalog (MovieLens plus released items) and the
users; and the offline evaluation of a model, or of the production models, on that split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from backend.core.settings import Settings, TrainSettings
from backend.data.catalog import load_catalog
from backend.data.lake import Lake
from backend.data.movielens import load as load_movielens
from backend.ml.evaluation import (
    evaluate,
    finish_interactions,
    merge_partials,
    partial_interactions,
    temporal_split,
)
from backend.ml.recommenders import MODELS, Popularity, Recommender
from backend.ml.results import OfflineMetrics
from backend.training.result import Scored
from registry import open_quarantine, open_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSet:
    """Everything a fit and its evaluation read; `history` is MovieLens' own ratings (the
    simulator's hidden tastes, for the feedback-loop forecast)."""

    lake: Lake
    versions: dict[str, int | None]  # the table versions read: the data's provenance
    quarantine: frozenset[int]
    interactions: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    history: pd.DataFrame


TRAINING_TOPICS = ("events.rating", "events.watch")
BLOCK_ROWS = 1_000_000  # events a Ray Data task reduces at once


def read_partials(lake: Lake, topic: str, columns: list[str], version: int | None
                  ) -> pd.DataFrame:
    """A topic's events at a table version reduced to per-(user, item) partials
    (`partial_interactions`). On Ray, each block of the table's files is reduced by a Ray
    Data task where it is read (`map_batches`), so the driver receives partials, not raw
    events; otherwise the table is read here."""
    import ray

    files = lake.files(topic, version=version)
    if ray.is_initialized() and files:
        ds = ray.data.read_parquet(files, columns=columns, filesystem=lake.fs)
        blocks = ds.map_batches(partial_interactions,  # type: ignore[arg-type]
                                batch_format="pandas",
                                batch_size=BLOCK_ROWS)
        # collected as Arrow and converted once: a pandas frame per block held several
        # copies of the partials on the driver
        parts = list(blocks.iter_batches(batch_format="pyarrow", batch_size=None))
        frame = pa.concat_tables(parts).to_pandas() if parts else \
            partial_interactions(pd.DataFrame(columns=columns))
        del parts
        via = "ray_data"
    else:
        frame = partial_interactions(
            lake.read_table(topic, columns=columns, version=version).to_pandas())
        via = "pyarrow"
    log.info("lake read topic=%s version=%s files=%d partials=%d via=%s", topic, version,
             len(files), len(frame), via)
    return frame


def quarantined(settings: Settings) -> set[int]:
    """Users held out as spam: flagged by the detectors or an operator, not released."""
    return open_quarantine(settings).held()


def load_training_set(settings: Settings) -> TrainingSet:
    """The lake's interactions (spam quarantined), split by `train.test_fraction`; raises
    RuntimeError when the lake holds nothing to train on."""
    lake = Lake.open(settings)
    versions = {t: lake.version(t) for t in TRAINING_TOPICS}  # pinned: what provenance names
    quarantine = quarantined(settings)
    parts = [read_partials(lake, "events.rating", ["user_id", "item_id", "rating", "ts"],
                           versions["events.rating"]),
             read_partials(lake, "events.watch", ["user_id", "item_id", "ts"],
                           versions["events.watch"])]
    # one topic's partials alone are not copied, and none outlive the merge
    partials = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
    del parts
    inter = finish_interactions(merge_partials(partials), quarantine)
    del partials
    if inter.empty:
        raise RuntimeError("the lake holds no ratings or watches yet: nothing to train on")
    ml = load_movielens(settings.data_cache)
    items = load_catalog(settings, ml.items)  # MovieLens plus released items: cold start
    train, test = temporal_split(inter, settings.train.test_fraction)
    log.info("training set rows=%d train=%d test=%d items=%d quarantined=%d", len(inter),
             len(train), len(test), len(items), len(quarantine))
    return TrainingSet(lake=lake, versions=versions, quarantine=frozenset(quarantine),
                       interactions=inter,
                       train=train, test=test, items=items, users=ml.users,
                       history=ml.ratings)


def evaluate_model(model: Recommender, data: TrainingSet, cfg: TrainSettings) -> OfflineMetrics:
    """Fit `model` on the split's train part, evaluate it on the test part at `cfg.k`."""
    fitted = model.fit(data.train, data.items, data.users)
    return evaluate(fitted, data.train, data.test, cfg.k, cfg.tail_share, cfg.eval_users)


def evaluate_production(settings: Settings) -> list[Scored]:
    """A popularity baseline and each variant's verified production version, refitted with
    its registered parameters on the split's train part and evaluated on its test part."""
    data = load_training_set(settings)
    registry = open_registry(settings)
    candidates: dict[str, Recommender] = {"popularity": Popularity()}
    for variant in registry.variants():
        manifest = registry.verify(variant, "production")
        candidates[f"{variant} {manifest.version}"] = MODELS[manifest.kind](**manifest.params)
    return [Scored(name=name, metrics=evaluate_model(model, data, settings.train))
            for name, model in candidates.items()]
