"""The item catalog: MovieLens items plus the items released since.

Releases are appended to a record log in the shared store (`catalog/releases`) by whoever
adds items (the simulator); retraining and analytics read the union, so a released item is
recommendable (cold start by content) from the next retrain on and counts in coverage from
the moment it exists.
"""

from __future__ import annotations

import pandas as pd

from backend.core.layout import Keys
from backend.core.settings import Settings
from backend.data.movielens import load as load_movielens


def release(settings: Settings, item: dict) -> None:
    """Append one released item (item_id, title, year, genres, released_at)."""
    settings.shared_store().log(Keys.releases).append(item)


def released(settings: Settings) -> pd.DataFrame:
    frame = pd.DataFrame(settings.shared_store().log(Keys.releases).read(),
                         columns=["item_id", "title", "year", "genres", "released_at"])
    frame["item_id"] = frame["item_id"].astype("int64")
    return frame


def load_catalog(settings: Settings, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """item_id, title, year, genres (and released_at for released items); `base` is the
    MovieLens items frame when the caller has it loaded already."""
    base = load_movielens(settings.data_cache).items if base is None else base
    new = released(settings)
    if new.empty:
        return base
    new = new[~new["item_id"].isin(base["item_id"])]
    new = new.assign(year=new["year"].astype("Int64"))
    return pd.concat([base, new], ignore_index=True)
