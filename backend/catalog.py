"""The item catalog: MovieLens items plus the items released since (`var/catalog/`).

Releases are appended to a JSON-lines file by whoever adds items (the simulator); retraining
and analytics read the union, so a released item is recommendable (cold start by content)
from the next retrain on and counts in coverage from the moment it exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from backend.data.movielens import load as load_movielens
from backend.settings import Settings


def releases_path(settings: Settings) -> Path:
    return settings.var_dir / "catalog" / "releases.jsonl"


def release(settings: Settings, item: dict) -> None:
    """Append one released item (item_id, title, year, genres, released_at) durably."""
    path = releases_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(item) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def released(settings: Settings) -> pd.DataFrame:
    path = releases_path(settings)
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line after a crash: skip it
                continue
    frame = pd.DataFrame(rows, columns=["item_id", "title", "year", "genres", "released_at"])
    frame["item_id"] = frame["item_id"].astype("int64")
    return frame


def load_catalog(settings: Settings) -> pd.DataFrame:
    """item_id, title, year, genres (and released_at for released items)."""
    base = load_movielens(settings.data_cache).items
    new = released(settings)
    if new.empty:
        return base
    new = new[~new["item_id"].isin(base["item_id"])]
    new = new.assign(year=pd.array(new["year"], dtype="Int64"))
    return pd.concat([base, new], ignore_index=True)
