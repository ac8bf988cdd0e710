"""Model extraction, measured: how much of the served recommender an attacker with client
keys recovers by querying the deployed API.

The platform is deployed as by default (serve_config.yaml through `reco serve start`, Model A
and B fitted on MovieLens-100K, the A/B split) with attacker client keys whose limit is
raised for the bench only: at the real limit (100 requests a minute per key) the same
queries take the wall time the table extrapolates. The attacker

- knows the public interaction data (MovieLens-100K: every user's ratings) and asks for the
  largest list the API gives (`k=100`) for users in a random order, one query per user;
- fits a surrogate item-kNN on the answers: items co-recommended in one answer are similar
  (cosine of the answer-by-item matrix, answers weighted by rank, 1 / log2(rank + 2));
- predicts any user's top-10: the answer's first ten for a user it queried, else the
  surrogate's item-kNN scores over the user's public history (seen items left out).

Agreement is |predicted top-10 ∩ served top-10| / 10, averaged over MovieLens's users (all,
the queried ones, the others), against what the API serves each user at `k=10` (asked
separately with an evaluator key, not counted in the budget). The baseline is what the
public data alone gives: the most-rated items the user has not seen. Ten keys split the
same queries, ten times the budget a day.

The answer-noise defence (`serve.answer_temperature`, `backend/ml/recommenders/noise.py`):
one deployment per temperature; its cost is Model A's and B's NDCG@10 and catalog coverage
on the temporal split with the same noise, and "copy k=10" asks every user's k=10 list again
(with the noise seeded per user and version, a repeated question gets the same answer).

    python bench/extraction.py [--points 25,50,100,200,400,943] [--temperatures 0,1,3]
Writes var/bench/extraction.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from backend.core.runtime import ray_env  # noqa: E402
from backend.core.settings import Settings  # noqa: E402
from backend.data.kafka import ensure_topics  # noqa: E402
from backend.data.movielens import load  # noqa: E402
from backend.ml.evaluation import build_interactions, evaluate, temporal_split  # noqa: E402
from backend.ml.recommenders import DiversityKNN, ItemKNN, Recommender  # noqa: E402
from backend.ml.recommenders.noise import candidates, plackett_luce  # noqa: E402
from backend.ops.broker import EmbeddedBroker  # noqa: E402
from backend.ops.raycluster import RayHead  # noqa: E402
from backend.serving.auth import digest  # noqa: E402
from bench.serve import free_port, prepare  # noqa: E402

LIMIT_PER_MINUTE = 100  # the rate limit a client key has by default (serve.per_minute)
DAY_BUDGET = LIMIT_PER_MINUTE * 60 * 24  # queries one key may make in a day
K_SERVED, K_ASKED = 10, 100


async def ask(port: int, keys: list[str], users: list[int], k: int,
              concurrency: int = 16) -> tuple[dict[int, list[int]], float]:
    """Each user's served list at `k`, the queries spread round-robin over `keys`; and the
    wall seconds taken."""
    answers: dict[int, list[int]] = {}
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, u in enumerate(users):
        queue.put_nowait((u, keys[i % len(keys)]))

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            u, key = queue.get_nowait()
            r = await client.get(f"/recommend/{u}", params={"k": k},
                                 headers={"X-API-Key": key})
            r.raise_for_status()  # a 429 here means the bench's raised limit did not apply
            answers[u] = [int(x) for x in r.text.split(",") if x]

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return answers, time.perf_counter() - t0


def surrogate_similarity(answers: dict[int, list[int]], n_items: int) -> np.ndarray:
    """Item-item cosine over the answers (rows: answers; an item's weight 1/log2(rank+2))."""
    m = np.zeros((len(answers), n_items + 1))
    for row, items in enumerate(answers.values()):
        m[row, items] = 1 / np.log2(np.arange(len(items)) + 2)
    co = m.T @ m
    norm = np.sqrt(np.diag(co))
    norm[norm == 0] = 1
    sim = co / norm[:, None] / norm[None, :]
    np.fill_diagonal(sim, 0)
    return sim


def predict(user: int, answers: dict[int, list[int]], sim: np.ndarray,
            history: dict[int, np.ndarray]) -> list[int]:
    """The attacker's top-10 for `user`: its own answer when queried, else item-kNN."""
    if user in answers:
        return answers[user][:K_SERVED]
    seen = history.get(user, np.zeros(0, dtype=int))
    scores = sim[seen].sum(axis=0) if len(seen) else np.zeros(sim.shape[0])
    scores[seen] = -np.inf
    scores[0] = -np.inf  # no item 0
    return [int(i) for i in np.argsort(-scores, kind="stable")[:K_SERVED]]


def agreement(pred: dict[int, list[int]], served: dict[int, list[int]]) -> float:
    """Mean over users of |pred ∩ served| / |served| (top-10 overlap)."""
    return float(np.mean([len(set(pred[u]) & set(s)) / len(s) for u, s in served.items()
                          if s]))


def popularity_baseline(ratings: pd.DataFrame, served: dict[int, list[int]],
                        history: dict[int, np.ndarray]) -> float:
    """Top-10 agreement of "the most-rated items the user has not seen": public data alone."""
    ranked = ratings["item_id"].value_counts().index.to_numpy()
    pred = {}
    for u in served:
        seen = set(history.get(u, np.zeros(0, dtype=int)).tolist())
        pred[u] = [int(i) for i in ranked if i not in seen][:K_SERVED]
    return agreement(pred, served)


class Noisy:
    """A fitted model whose lists are the served noisy ones (evaluate() scores it as is)."""

    def __init__(self, model: Recommender, temperature: float) -> None:
        self.model, self.temperature = model, temperature

    def recommend_many(self, users: list[int], k: int) -> dict[int, list[int]]:
        lists = self.model.recommend_many(users, candidates(k))
        return {u: plackett_luce(ranked, k, self.temperature, f"offline/{u}")
                for u, ranked in lists.items()}

    def __getattr__(self, name: str) -> object:
        return getattr(self.model, name)


def offline_cost(settings: Settings, temperature: float) -> dict[str, float]:
    """NDCG@10 and catalog coverage of Model A and B on the temporal split, with the noise."""
    ml = load(settings.data_cache)
    inter = build_interactions(ml.ratings, ml.ratings.iloc[:0][["user_id", "item_id", "ts"]])
    train, test = temporal_split(inter, settings.train.test_fraction)
    out = {}
    for name, model in (("A", ItemKNN()), ("B", DiversityKNN())):
        model.fit(train, ml.items, ml.users)
        m = evaluate(Noisy(model, temperature), train, test, K_SERVED)  # type: ignore[arg-type]
        out[f"ndcg_{name}"], out[f"coverage_{name}"] = m.ndcg, m.coverage
    return out


def deploy(workdir: Path, keys: dict[str, str], temperature: float
           ) -> tuple[Settings, RayHead, EmbeddedBroker]:
    """The default deployment with extra client keys (limit raised; see the docstring) and
    the answer noise at `temperature`."""
    settings = prepare(workdir / "platform")
    ports = {"head_port": free_port(), "dashboard_port": free_port(),
             "client_port": free_port(), "dashboard_agent_port": free_port(),
             "metrics_export_port": free_port()}
    head_settings = Settings(var_dir=workdir / "ray", ray=ports, serve={
        "haproxy_metrics_port": free_port(), "haproxy_stats_port": free_port()})
    head = RayHead(head_settings)
    broker = EmbeddedBroker(settings.kafka, settings.run_dir)
    head.start()
    broker.start()
    ensure_topics(settings.kafka)
    api_keys = {name: {"sha256": digest(key), "role": "client", "per_minute": 1e6}
                for name, key in keys.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECO_", "RAY_"))}
    env |= ray_env(head_settings) | {
        "RAY_ADDRESS": head.address, "RECO_VAR_DIR": str(settings.var_dir),
        "RECO_KAFKA__EMBEDDED_PORT": str(settings.kafka.embedded_port),
        "RECO_SERVE__PORT": str(settings.serve.port), "PYTHONPATH": str(ROOT),
        "RECO_SERVE__API_KEYS": json.dumps(api_keys),
        "RECO_SERVE__ANSWER_TEMPERATURE": str(temperature)}
    out = subprocess.run([sys.executable, "-m", "backend.ops.cli", "serve", "start",
                          "--wait", "300"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=420)
    if out.returncode != 0:
        broker.stop()
        head.stop()
        raise RuntimeError(out.stderr[-3000:])
    return settings, head, broker


def attack(temperature: float, points: list[int], workdir: Path) -> dict:
    """One deployment at `temperature`: the served lists, the attackers' answers, the
    agreement rows."""
    keys = {f"attacker{i}": secrets.token_urlsafe(24) for i in range(10)}
    keys["evaluator"] = secrets.token_urlsafe(24)
    settings, head, broker = deploy(workdir, keys, temperature)
    try:
        ml = load(settings.data_cache)
        users = sorted(ml.users["user_id"].tolist())
        history = {int(cast(int, u)): g["item_id"].to_numpy(dtype=int)  # u: an int64 user id
                   for u, g in ml.ratings.groupby("user_id")}
        n_items = int(ml.items["item_id"].max())
        port = settings.serve.port
        served, _ = asyncio.run(ask(port, [keys["evaluator"]], users, K_SERVED))
        again, _ = asyncio.run(ask(port, [keys["attacker0"]], users, K_SERVED))
        order = list(np.random.default_rng(7).permutation(users))
        rows = []
        wall: dict[int, float] = {}
        for n_keys in (1, 10):
            attacker = [keys[f"attacker{i}"] for i in range(n_keys)]
            answers, wall[n_keys] = asyncio.run(ask(port, attacker, order, K_ASKED))
            for q in points:
                got = {u: answers[u] for u in order[:q]}
                sim = surrogate_similarity(got, n_items)
                pred = {u: predict(u, got, sim, history) for u in served}
                rest = {u: s for u, s in served.items() if u not in got}
                mine = {u: s for u, s in served.items() if u in got}
                rows.append({
                    "temperature": temperature, "keys": n_keys, "queries": q,
                    "day_budget_share": q / (DAY_BUDGET * n_keys),
                    "minutes_at_limit": q / (LIMIT_PER_MINUTE * n_keys),
                    "agreement_all": agreement(pred, served),
                    "agreement_queried": agreement(pred, mine),  # k=100's first ten
                    "agreement_unqueried": agreement(pred, rest) if rest else None})
        return {"rows": rows, "wall": wall,
                "copy_k10": agreement(again, served),  # the same question asked again
                "popularity_baseline": popularity_baseline(ml.ratings, served, history),
                "offline": offline_cost(settings, temperature), "users": len(users)}
    finally:
        broker.stop()
        head.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", default="25,50,100,200,400,943",
                        help="queries spent at which the surrogate is fitted and scored")
    parser.add_argument("--temperatures", default="0,1,3",
                        help="answer-noise temperatures, one deployment each")
    args = parser.parse_args()
    points = [int(p) for p in args.points.split(",")]
    workdir = ROOT / "var" / "bench" / "extraction-run"
    legs = {float(t): attack(float(t), points, workdir) for t in args.temperatures.split(",")}
    print(f"\n{'temp':>5}{'keys':>5}{'queries':>9}{'of a day':>10}{'min at limit':>14}"
          f"{'agree all':>11}{'queried':>9}{'unqueried':>11}")
    for leg in legs.values():
        for r in leg["rows"]:
            unq = "-" if r["agreement_unqueried"] is None else f"{r['agreement_unqueried']:.3f}"
            print(f"{r['temperature']:>5g}{r['keys']:>5}{r['queries']:>9}"
                  f"{r['day_budget_share']:>10.2%}{r['minutes_at_limit']:>14.1f}"
                  f"{r['agreement_all']:>11.3f}{r['agreement_queried']:>9.3f}{unq:>11}")
    print(f"\n{'temp':>5}{'ndcg A':>9}{'ndcg B':>9}{'cover A':>9}{'cover B':>9}"
          f"{'copy k=10':>11}{'public baseline':>17}")
    for t, leg in legs.items():
        o = leg["offline"]
        print(f"{t:>5g}{o['ndcg_A']:>9.4f}{o['ndcg_B']:>9.4f}{o['coverage_A']:>9.3f}"
              f"{o['coverage_B']:>9.3f}{leg['copy_k10']:>11.3f}"
              f"{leg['popularity_baseline']:>17.3f}")
    for t, leg in legs.items():
        print(f"temperature {t:g}: every user's k=100 queries with the limit raised: "
              + ", ".join(f"{n} key(s) {s:.1f} s" for n, s in leg["wall"].items()))
    out = ROOT / "var" / "bench" / "extraction.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "legs": {str(t): leg for t, leg in legs.items()},
        "limit_per_minute": LIMIT_PER_MINUTE, "day_budget_per_key": DAY_BUDGET,
        "k_asked": K_ASKED, "k_served": K_SERVED, "limit_raised_for_the_bench": True},
        indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
