"""Pre-promotion feedback-loop forecast: run a candidate against simulated users offline and
estimate whether it concentrates exposure when it keeps retraining on its own traffic.

The loop is the platform's, minus HTTP and Kafka: the candidate recommends to users drawn by
the simulator (same hidden preferences as `reco simulate`, no bots), the simulator decides
what they watch and rate, the new interactions join the training data and the candidate is
refitted; the exposure Gini of each step's recommendations over the catalog is recorded, and
its least-squares slope per step is the forecast (`backend.ml.metrics.feedback.trend`). A slope
whose 95% interval lies above the echo-chamber limit (`analytics.echo_slope_max`, the same
limit and rule the live trend is held to) refuses promotion. The idea follows Chaney et al.
2018 (simulated feedback loops homogenise exposure); running it as a promotion gate is this
platform's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pandas as pd

from backend.core.settings import SimSettings
from backend.ml.evaluation import COLUMNS
from backend.ml.metrics.feedback import trend
from backend.ml.metrics.ranking import gini
from backend.ml.recommenders import Recommender
from backend.ml.results import FeedbackForecast
from backend.ml.simulation import SimulatorLogic

log = logging.getLogger(__name__)


def forecast_gini_slope(make_model: Callable[[], Recommender], interactions: pd.DataFrame,
                        items: pd.DataFrame, users: pd.DataFrame, ml_ratings: pd.DataFrame,
                        sim: SimSettings, steps: int, visits: int, k: int,
                        limit: float, max_rows: int | None = None) -> FeedbackForecast:
    """Forecast of the candidate's exposure-Gini slope over `steps` (at least 3) retrain
    cycles of `visits` simulated visits each; `exceeds` when the slope's 95% interval lies
    above `limit`. Above `max_rows` interactions, the loop runs on the simulated users' and
    a seeded sample of the other users' (`user_sample`): each step refits the candidate, and
    a few hundred visits' feedback is what is measured, not the bulk of the history."""
    logic = SimulatorLogic(ml_ratings, items, users, sim.model_copy(update={"bot_share": 0.0}))
    catalog = np.asarray(logic.catalog)
    position = {int(i): n for n, i in enumerate(catalog)}
    frame = user_sample(interactions[COLUMNS], set(logic.population.tolist()), max_rows)
    now = pd.Timestamp(frame["ts"].max()) if len(frame) else pd.Timestamp.now(tz="UTC")
    model = make_model().fit(frame, items, users)
    ginis: list[float] = []
    for step in range(steps):
        now = now + timedelta(hours=3)
        visitors = [logic.next_user() for _ in range(visits)]
        lists = model.recommend_many(visitors, k)
        counts = np.zeros(len(catalog))
        rows = []
        for user in visitors:
            served = lists[user]
            for item in served:
                if (j := position.get(int(item))) is not None:
                    counts[j] += 1
            reaction = logic.react(user, served, now.to_pydatetime())
            rated = {r["item_id"]: r["rating"] for r in reaction.ratings}
            rows += [(w["user_id"], w["item_id"], now, float(rated.get(w["item_id"], np.nan)),
                      True) for w in reaction.watches]
        ginis.append(gini(counts))
        if step < steps - 1 and rows:
            frame = pd.concat([frame, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True)
            frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
            model = make_model().fit(frame, items, users)
    t = trend(ginis, limit)
    if t.slope is None or t.ci_low is None or t.ci_high is None:
        raise ValueError(f"forecast over {steps} steps: {t.reason}")
    out = FeedbackForecast(steps=steps, visits_per_step=visits,
                           gini=[round(g, 5) for g in ginis], slope=t.slope, ci_low=t.ci_low,
                           ci_high=t.ci_high, limit=limit, exceeds=t.detected)
    log.info("forecast slope=%.5f ci_low=%.5f limit=%s exceeds=%s gini=%s", t.slope, t.ci_low,
             limit, out.exceeds, out.gini)
    return out


def user_sample(frame: pd.DataFrame, keep: set[int], max_rows: int | None,
                seed: int = 0) -> pd.DataFrame:
    """Whole users' interactions, at most `max_rows` (when given): every user in `keep`,
    then other users in a seeded random order while they fit."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    counts = frame.groupby("user_id").size()
    kept = counts.index.isin(list(keep))
    others = counts[~kept].sample(frac=1.0, random_state=seed)
    budget = max_rows - int(counts[kept].sum())
    chosen = others.index[others.cumsum().to_numpy() <= budget]
    users = np.concatenate([counts.index[kept].to_numpy(), chosen.to_numpy()])
    return frame[frame["user_id"].isin(users)].reset_index(drop=True)
