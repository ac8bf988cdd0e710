"""Recommenders sharing one API (`base.Recommender`)."""

from backend.ml.recommenders.als import ALS
from backend.ml.recommenders.base import Recommender
from backend.ml.recommenders.models import DiversityKNN, ItemKNN, Popularity

MODELS: dict[str, type[Recommender]] = Recommender.by_kind  # kind -> class, filled on import

__all__ = ["ALS", "MODELS", "DiversityKNN", "ItemKNN", "Popularity", "Recommender"]
