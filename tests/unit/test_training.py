"""The training layer on a small lake: the one training set that `reco evaluate` and the
retrain pipeline share, the evaluation of production models, and a whole retrain (register,
gate, promote, decisions, the result the scheduler reads). MovieLens is replaced by the
recommender tests' small data set."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest
from click.testing import CliRunner

from backend.core.layout import Keys
from backend.data.batch import validate
from backend.data.catalog import release
from backend.data.events import RatingEvent, WatchEvent
from backend.data.lake import Lake
from backend.data.movielens import MovieLens
from backend.ml.evaluation import build_interactions, temporal_split
from backend.ml.recommenders import ItemKNN, Popularity
from backend.training import dataset as training_dataset
from backend.training.dataset import evaluate_model, evaluate_production, load_training_set
from backend.training.result import RetrainResult
from backend.training.retrain import model_params, retrain
from registry import open_quarantine, open_registry
from tests.unit.test_recommenders import dataset


def _landed(model, records):
    frame = validate(model, records).valid.drop(columns="_pos")
    return frame.assign(kafka_partition=0, kafka_offset=range(len(frame)))


@pytest.fixture
def lake_settings(settings, monkeypatch):
    """Settings whose lake holds the small data set's ratings (every 5th also watched), user
    3 quarantined, one released item, and MovieLens replaced by the same small world."""
    inter, items, users = dataset()
    monkeypatch.setattr(training_dataset, "load_movielens", lambda _cache: MovieLens(
        ratings=inter[["user_id", "item_id", "rating", "ts"]], items=items, users=users))
    lake = Lake.open(settings)
    lake.write("events.rating", _landed(RatingEvent, [
        {"event_id": str(uuid.uuid4()), "ts": r.ts.isoformat(), "user_id": int(r.user_id),
         "item_id": int(r.item_id), "rating": int(r.rating)} for r in inter.itertuples()]))
    lake.write("events.watch", _landed(WatchEvent, [
        {"event_id": str(uuid.uuid4()), "ts": (r.ts + pd.Timedelta(1, "min")).isoformat(),
         "user_id": int(r.user_id), "item_id": int(r.item_id), "minutes": 90.0}
        for r in inter.iloc[::5].itertuples()]))
    open_quarantine(settings).flag(3, "key:ops", "a test's spammer")
    release(settings, {"item_id": 500, "title": "new", "year": 2024, "genres": ["Drama"],
                       "released_at": "2024-03-01T00:00:00+00:00"})
    return settings


def test_training_set_is_the_lake_quarantined_and_split_with_the_released_catalog(
        lake_settings):
    data = load_training_set(lake_settings)
    lake = Lake.open(lake_settings)
    expected = build_interactions(lake.read("events.rating"), lake.read("events.watch"), {3})
    pd.testing.assert_frame_equal(data.interactions, expected)
    assert 3 not in set(data.interactions["user_id"]) and data.quarantine == {3}
    assert data.interactions["watched"].any()
    train, test = temporal_split(expected, lake_settings.train.test_fraction)
    pd.testing.assert_frame_equal(data.train, train)
    pd.testing.assert_frame_equal(data.test, test)
    assert 500 in set(data.items["item_id"])  # the released item, as retraining sees it
    assert len(data.users) == len(dataset()[2])


def test_empty_lake_has_nothing_to_train_on(settings):
    with pytest.raises(RuntimeError, match="nothing to train on"):
        load_training_set(settings)


def test_evaluate_production_refits_each_production_version_on_the_shared_split(
        lake_settings):
    registry = open_registry(lake_settings, signer=True)
    params = model_params(lake_settings.variants["A"], lake_settings.train)
    data = load_training_set(lake_settings)
    registry.promote("A", registry.register("A", ItemKNN(**params).fit(
        data.interactions, data.items, data.users)))
    scored = evaluate_production(lake_settings)
    assert [s.name for s in scored] == ["popularity", "A v0001"]
    cfg = lake_settings.train
    assert scored[0].metrics == evaluate_model(Popularity(), data, cfg)
    assert scored[1].metrics.model_dump(exclude={"ild"}) == evaluate_model(
        ItemKNN(**params), data, cfg).model_dump(exclude={"ild"})

    from backend.ops.cli import main

    runner = CliRunner()
    out = runner.invoke(main, ["evaluate"], env={"RECO_VAR_DIR": str(lake_settings.var_dir)})
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[0].split() == ["model", "ndcg", "recall", "map", "coverage", "gini",
                                "novelty", "aplt"]
    m = scored[1].metrics
    assert lines[2].split() == ["A", "v0001"] + [f"{v:.4f}" for v in (
        m.ndcg, m.recall, m.map, m.coverage, m.gini, m.novelty, m.aplt)]


def test_retrain_registers_gates_promotes_and_reports_what_the_scheduler_reads(lake_settings):
    lake_settings.train.forecast_steps, lake_settings.train.forecast_visits = 3, 10
    lake_settings.train.min_coverage = 0.0
    lake_settings.analytics.echo_slope_max = 1.0  # a tiny world narrows fast
    first = retrain(lake_settings)
    assert set(first.root) == {"A", "B"}
    registry = open_registry(lake_settings)
    for variant, decision in first.items():
        assert decision.promoted and decision.reasons == [], decision
        assert registry.aliases(variant).production == decision.version
        manifest = registry.verify(variant, decision.version)
        assert manifest.metrics == decision.metrics
        assert manifest.provenance is not None and manifest.provenance.quarantined_users == 1
        assert manifest.provenance.rows == len(load_training_set(lake_settings).interactions)
        assert manifest.provenance.feedback_forecast == decision.forecast
        assert decision.forecast is not None and decision.forecast.steps == 3
        params = model_params(lake_settings.variants[variant], lake_settings.train)
        assert params.items() <= manifest.params.items()
    # a second run under a stricter Gini limit is refused; production stays the first version
    lake_settings.train.max_gini = 0.0
    second = retrain(lake_settings)
    for variant, decision in second.items():
        assert not decision.promoted and any("Gini" in r for r in decision.reasons)
        assert registry.aliases(variant).production == first[variant].version
        assert [d["promoted"] for d in registry.decisions(variant).read()] == [True, False]
    # the gate's promotions (only) are in the operators' audit trail
    from registry import open_experiments
    assert sorted((e.actor, e.action, e.detail["variant"], e.detail["version"])
                  for e in open_experiments(lake_settings).events()) == [
        ("job:retrain", "promote", v, first[v].version) for v in ("A", "B")]
    # the --result file, as the retrain job writes it and the scheduler parses it
    store = lake_settings.shared_store()
    store.put_model(Keys.retrain_result("job-1"), second)
    parsed = RetrainResult.model_validate(store.get_json(Keys.retrain_result("job-1")))
    assert parsed["B"].version == second["B"].version and parsed["B"].reasons


def test_a_variants_unknown_parameter_is_refused_by_name():
    from backend.core.errors import ConfigError
    from backend.core.settings import TrainSettings, VariantSpec

    with pytest.raises(ConfigError, match="factros"):
        model_params(VariantSpec(model="als", params={"factros": 8}), TrainSettings())
    assert model_params(VariantSpec(model="als", params={"factors": 8}),
                        TrainSettings())["factors"] == 8
