"""Tamper tests: a flipped byte, a swapped, missing or extra file, a foreign key: all refused.
Manifests written the way earlier versions wrote them (a plain dict, canonical JSON) still
verify and load."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.core.hashing import sha256_file
from backend.core.store import Document
from backend.ml.recommenders import ItemKNN, Popularity
from backend.ml.results import FeedbackForecast, OfflineMetrics
from registry import Aliases, Decision, Provenance, Registry, RegistryError, open_registry, signing
from registry.manifest import LakeProvenance, Manifest
from registry.signing import ensure_keys
from tests.unit.test_recommenders import dataset

METRICS = OfflineMetrics(k=10, users=80, ndcg=0.2, recall=0.3, map=0.1, coverage=0.4,
                         gini=0.7, novelty=5.5, ild=math.nan, aplt=0.25)
FORECAST = FeedbackForecast(steps=3, visits_per_step=50, gini=[0.5, 0.51, 0.52], slope=0.01,
                            ci_low=0.0, ci_high=0.02, limit=0.02, exceeds=False)
PROVENANCE = Provenance(
    git_sha="abc", training_window=("2024-01-01 00:00:00+00:00", "2024-02-01 00:00:00+00:00"),
    rows=640, users=80, quarantined_users=1,
    lake=LakeProvenance(files=2, files_sha256="f" * 64,
                        max_offsets={"events.rating": {"0": 639}, "events.watch": {}}),
    libraries={"numpy": "2.0"}, lockfile_sha256=None, train_seconds=0.5,
    feedback_forecast=FORECAST)


@pytest.fixture(scope="module")
def models():
    data = dataset()
    return ItemKNN().fit(*data), Popularity().fit(*data)


@pytest.fixture
def registry(settings):
    return open_registry(settings, signer=True)


def test_keys_private_0600_and_register_verify_load(registry, settings, models):
    private = settings.registry.keys_dir / "registry_ed25519.pem"
    assert oct(os.stat(private).st_mode & 0o777) == "0o600"
    v = registry.register("A", models[0], PROVENANCE, METRICS)
    assert v == "v0001" and registry.aliases("A") == Aliases(candidate="v0001")
    manifest = registry.verify("A", v)
    assert set(manifest.files) == {"model.npz", "model.json"}
    assert manifest.provenance == PROVENANCE and manifest.metrics is not None
    assert math.isnan(manifest.metrics.ild) and manifest.metrics.ndcg == 0.2
    model, _ = registry.load("A", "candidate")
    assert model.recommend_many([1, 2], 5) == models[0].recommend_many([1, 2], 5)


def test_promote_and_rollback(registry, models):
    v1 = registry.register("A", models[0])
    v2 = registry.register("A", models[0])
    registry.promote("A", v1)
    assert registry.promote("A", v2) == Aliases(production=v2, previous=v1)
    assert registry.rollback("A") == Aliases(production=v1, previous=v2)
    stored = Document(registry.store, "registry/A/aliases").read()
    assert stored == {"production": v1, "previous": v2}  # unset ones left out
    with pytest.raises(RegistryError):
        Registry(registry.store, registry.public_key, registry.private_key).rollback("B")


def test_a_promote_racing_a_new_candidate_keeps_both(registry, models, monkeypatch):
    """The retrain job registers a candidate between an operator's promote reading the
    aliases and committing them: the promote commits on top of it, losing neither."""
    v1 = registry.register("A", models[0])
    registry.register("A", models[1])
    retrain = Registry(registry.store, registry.public_key, registry.private_key)
    get, raced = registry.store.get, []

    def racing_get(key: str) -> bytes | None:
        data = get(key)
        if "/aliases" in key and not raced:
            raced.append("")  # once: the register below reads the aliases too
            raced[0] = retrain.register("A", models[0])  # committed after this read
        return data

    monkeypatch.setattr(registry.store, "get", racing_get)
    assert registry.promote("A", v1) == Aliases(production=v1, candidate=raced[0])
    assert registry.aliases("A") == Aliases(production=v1, candidate=raced[0])


@pytest.mark.parametrize("attack", ["flip_byte", "edit_manifest", "missing_file",
                                    "extra_file", "swap_file", "drop_signature"])
def test_tampering_is_refused(registry, models, attack):
    v_other = registry.register("A", models[1])
    v = registry.register("A", models[0])
    folder = registry.store.root / "registry" / "A" / v
    stamps = registry.stamp("A", v), registry.stamp("A", v_other)
    assert registry.stamp("A", v) == stamps[0] != stamps[1]
    if attack == "flip_byte":
        data = bytearray((folder / "model.npz").read_bytes())
        data[len(data) // 2] ^= 0x01
        (folder / "model.npz").write_bytes(bytes(data))
    elif attack == "edit_manifest":
        m = json.loads((folder / "manifest.json").read_text())
        m["metrics"] = {"ndcg@10": 0.99}
        (folder / "manifest.json").write_text(json.dumps(m))
    elif attack == "missing_file":
        (folder / "model.json").unlink()
    elif attack == "extra_file":
        (folder / "evil.py").write_text("print('hi')")
    elif attack == "swap_file":
        shutil.copy(folder.parent / v_other / "model.npz", folder / "model.npz")
    elif attack == "drop_signature":
        (folder / "manifest.sig").unlink()
    with pytest.raises(RegistryError):
        registry.verify("A", v)
    with pytest.raises(RegistryError):
        registry.load("A", v)
    with pytest.raises(RegistryError):
        registry.promote("A", v)
    registry.verify("A", v_other)  # the untouched version still verifies
    # a verdict kept by stamp (the dashboard's) is asked again: the stamp changed
    assert registry.stamp("A", v) != stamps[0] and registry.stamp("A", v_other) == stamps[1]


def test_signed_with_another_key_is_refused(registry, models, tmp_path):
    foreign_private, _ = ensure_keys(tmp_path / "other-keys")
    rogue = Registry(registry.store, registry.public_key, foreign_private)
    v = rogue.register("A", models[0])
    with pytest.raises(RegistryError, match="signature"):
        registry.verify("A", v)


def test_read_only_registry_cannot_register(registry, models):
    reader = Registry(registry.store, registry.public_key)
    with pytest.raises(RegistryError):
        reader.register("A", models[0])


def test_variant_answers_a_batch_as_it_answers_each_request(registry, models):
    from backend.serving.variant import VariantLogic

    registry.promote("A", registry.register("A", models[0]))
    variant = VariantLogic(registry, "A")
    requests = [(1, 5), (2, 3), (1, 5), (999_999, 4), (2, 10)]  # repeats, a cold user, ks
    batch = variant.recommend_batch(requests)
    assert [r["items"] for r in batch] == [variant.recommend(u, k)["items"]
                                           for u, k in requests]
    assert [len(r["items"]) for r in batch] == [5, 3, 5, 4, 10]
    assert {r["model_version"] for r in batch} == {"v0001"}


# -- manifests written before the manifest was a model ----------------------------------------

OLD_METRICS = {"k": 10, "users": 80, "ndcg": 0.2, "recall": 0.3, "map": 0.1, "coverage": 0.4,
               "gini": 0.7, "novelty": 5.5, "ild": math.nan, "aplt": 0.25}
OLD_FORECAST = {"steps": 3, "visits_per_step": 50, "gini": [0.5, 0.51, 0.52], "slope": 0.01,
                "ci_low": 0.0, "ci_high": 0.02, "limit": 0.02, "exceeds": False}
OLD_PROVENANCE = {
    "git_sha": "abc", "training_window": ["2024-01-01 00:00:00+00:00",
                                          "2024-02-01 00:00:00+00:00"],
    "rows": 640, "users": 80, "quarantined_users": 1,
    "lake": {"files": 2, "files_sha256": "f" * 64,
             "max_offsets": {"events.rating": {"0": 639}, "events.watch": {}}},
    "libraries": {"numpy": "2.0"}, "lockfile_sha256": None,
    "train_seconds": 0.5, "feedback_forecast": OLD_FORECAST}


def _old_canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _old_manifest(variant, version, model, files, created_at, provenance, metrics) -> dict:
    return {"variant": variant, "version": version, "kind": model.kind,
            "created_at": created_at,
            "files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in sorted(files)},
            "params": model.params, "metrics": metrics, "provenance": provenance}


def _register_old_way(registry, variant, model, provenance: dict, metrics: dict) -> str:
    """What `Registry.register` wrote before: a plain dict as canonical JSON, signed."""
    base = registry.store.root / "registry" / variant
    base.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()]
    version = f"v{max(existing, default=0) + 1:04d}"
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
    files = model.save(tmp)
    payload = _old_canonical(_old_manifest(variant, version, model, files,
                                           datetime.now(UTC).isoformat(), provenance, metrics))
    (tmp / "manifest.json").write_bytes(payload)
    (tmp / "manifest.sig").write_bytes(
        signing.sign(signing.load_private(registry.private_key), payload))
    os.replace(tmp, base / version)
    (base / "aliases.json").write_bytes(_old_canonical({"candidate": version}))
    return version


def test_manifest_signed_the_old_way_verifies_loads_and_reads_back_byte_for_byte(registry,
                                                                                   models):
    trained = _register_old_way(registry, "A", models[0], OLD_PROVENANCE, OLD_METRICS)
    bare = _register_old_way(registry, "A", models[1], {}, {})  # as tests and benches did
    assert registry.aliases("A") == Aliases(candidate=bare)
    for version in (trained, bare):
        manifest = registry.verify("A", version)
        stored = (registry.store.root / "registry" / "A" / version / "manifest.json").read_bytes()
        assert manifest.canonical() == stored  # nothing lost or changed in the model
    manifest = registry.verify("A", trained)
    assert manifest.provenance == PROVENANCE and manifest.metrics is not None
    assert manifest.metrics.model_dump(exclude={"ild"}) == METRICS.model_dump(exclude={"ild"})
    assert registry.verify("A", bare).metrics is None
    model, loaded = registry.load("A", trained)
    assert loaded == manifest
    assert model.recommend_many([1, 2], 5) == models[0].recommend_many([1, 2], 5)
    registry.promote("A", trained)
    assert registry.aliases("A") == Aliases(production=trained, candidate=bare)


def test_register_writes_what_the_old_code_wrote(registry, models):
    """Same inputs, same manifest bytes as the dict-based register (and so the same JSON for
    every reader of manifest.json)."""
    version = registry.register("A", models[0], PROVENANCE, METRICS)
    folder = registry.store.root / "registry" / "A" / version
    stored = (folder / "manifest.json").read_bytes()
    files = [folder / "model.json", folder / "model.npz"]
    created = json.loads(stored)["created_at"]
    assert stored == _old_canonical(_old_manifest("A", version, models[0], files, created,
                                                  OLD_PROVENANCE, OLD_METRICS))
    bare = registry.register("A", models[0])
    stored = (registry.store.root / "registry" / "A" / bare / "manifest.json").read_bytes()
    assert stored == _old_canonical(_old_manifest("A", bare, models[0], files,
                                                  json.loads(stored)["created_at"], {}, {}))


def test_decisions_are_appended_as_before(registry, models):
    version = registry.register("A", models[0], PROVENANCE, METRICS)
    registry.record_decision("A", Decision(version=version, promoted=False,
                                           reasons=["Gini 0.995 > 0.99"], metrics=METRICS,
                                           forecast=FORECAST))
    record = registry.decisions("A").read()[-1]
    at = record["at"]
    assert datetime.fromisoformat(at).tzinfo is not None
    assert json.dumps(record, sort_keys=True) == json.dumps({
        "at": at, "version": version, "promoted": False, "reasons": ["Gini 0.995 > 0.99"],
        "metrics": OLD_METRICS, "forecast": OLD_FORECAST}, sort_keys=True)


def test_signed_manifest_that_is_not_a_manifest_is_refused(registry, models):
    version = _register_old_way(registry, "A", models[0], {"rows": "many"}, OLD_METRICS)
    with pytest.raises(RegistryError, match="does not parse"):
        registry.verify("A", version)
    with pytest.raises(RegistryError, match="unknown alias"):
        registry.set_alias("A", "staging", version)


def test_manifest_is_frozen(registry, models):
    manifest = registry.verify("A", registry.register("A", models[0], PROVENANCE, METRICS))
    assert isinstance(manifest, Manifest)
    with pytest.raises(ValueError):
        manifest.version = "v9999"
