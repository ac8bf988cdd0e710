"""VariantLogic (the Variant deployment's logic) over a real registry, without Ray: a promoted
version is picked up, a tampered one refused while the good one keeps serving, and the shared
run-time knobs are applied once per change and kept across reloads."""

from __future__ import annotations

import pytest

from backend.ml.recommenders import DiversityKNN
from backend.serving.schemas import Allocation, SharedExperiment
from backend.serving.variant import VariantLogic
from registry import RegistryError, open_registry
from tests.unit.test_recommenders import dataset


@pytest.fixture(scope="module")
def model():
    return DiversityKNN().fit(*dataset())


@pytest.fixture
def registry(settings):
    return open_registry(settings, signer=True)


def test_without_a_production_version_nothing_is_served(registry):
    variant = VariantLogic(registry, "B")
    assert variant.status().model_dump() == {"variant": "B", "version": None, "refused": {},
                                             "runtime": {}}
    with pytest.raises(RegistryError):
        variant.recommend(1, 3)


def test_a_promoted_version_is_picked_up_and_a_tampered_one_refused(registry, model):
    registry.promote("B", registry.register("B", model, {}, {}))
    variant = VariantLogic(registry, "B")
    assert variant.version == "v0001" and not variant.reload()  # nothing new
    good = registry.register("B", model, {}, {})
    registry.promote("B", good)
    assert variant.reload() and variant.version == good
    bad = registry.register("B", model, {}, {})
    (registry.store.root / "registry" / "B" / bad / "evil.py").write_text("import os")
    registry.set_alias("B", "production", bad)  # bypassing promote, which verifies
    assert not variant.reload()
    assert variant.version == good and bad in variant.refused
    assert not variant.reload()  # refused once, not retried on every poll
    assert len(variant.recommend(5, 4)["items"]) == 4


def shared(generation: int, b_runtime: dict[str, int]) -> SharedExperiment:
    two = Allocation(weights={"A": 0.5, "B": 0.5}, salt="s")
    return SharedExperiment(allocation=two, default=two, generation=generation,
                            b_runtime=b_runtime)


def test_shared_knobs_apply_once_per_generation_and_survive_a_reload(registry, model):
    registry.promote("B", registry.register("B", model, {}, {}))
    variant = VariantLogic(registry, "B")
    variant.follow(shared(1, {"tail_slots": 4}))
    assert variant.model.params["tail_slots"] == 4 and variant.generation == 1
    variant.model.set_params(tail_slots=1)  # a knob changed behind its back...
    variant.follow(shared(1, {"tail_slots": 4}))
    assert variant.model.params["tail_slots"] == 1  # ...is not re-applied without a change
    variant.follow(shared(2, {}))  # a split change: no knobs
    assert variant.generation == 2 and variant.runtime == {"tail_slots": 4}
    registry.promote("B", registry.register("B", model, {}, {}))
    assert variant.reload() and variant.model.params["tail_slots"] == 4  # kept
    assert variant.status().runtime == {"tail_slots": 4}
