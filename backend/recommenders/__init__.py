"""Recommenders sharing one API (`base.Recommender`)."""

from backend.recommenders.base import Recommender
from backend.recommenders.models import DiversityKNN, ItemKNN, Popularity

MODELS: dict[str, type[Recommender]] = {
    m.kind: m for m in (Popularity, ItemKNN, DiversityKNN)
}

__all__ = ["MODELS", "DiversityKNN", "ItemKNN", "Popularity", "Recommender"]
