"""The item catalog: MovieLens items plus the items released since (`var/catalog/`).

Releases are appended to a JSON-lines file by whoever adds items (the simulator); retraining
and analytics read the union, so a released item is recommendable (cold start by content)
from the next retrain on and counts in coverage from the moment it exists.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backend.core.files import append_jsonl, read_jsonl
from backend.core.settings import Settings
from backend.data.movielens import load as load_movielens


def releases_path(settings: Settings) -> Path:
    return settings.layout.releases


def release(settings: Settings, item: dict) -> None:
    """Append one released item (item_id, title, year, genres, released_at) durably."""
    append_jsonl(releases_path(settings), item, fsync=True)


def released(settings: Settings) -> pd.DataFrame:
    frame = pd.DataFrame(read_jsonl(releases_path(settings)),
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
