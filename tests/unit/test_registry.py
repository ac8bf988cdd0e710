"""Tamper tests: a flipped byte, a swapped, missing or extra file, a foreign key: all refused."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from backend.ml.recommenders import ItemKNN, Popularity
from registry import Registry, RegistryError, open_registry
from registry.signing import ensure_keys
from tests.unit.test_recommenders import dataset


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
    v = registry.register("A", models[0], {"git_sha": "abc"}, {"ndcg@10": 0.2})
    assert v == "v0001" and registry.aliases("A") == {"candidate": "v0001"}
    manifest = registry.verify("A", v)
    assert set(manifest["files"]) == {"model.npz", "model.json"}
    assert manifest["provenance"] == {"git_sha": "abc"}
    model, _ = registry.load("A", "candidate")
    assert model.recommend_many([1, 2], 5) == models[0].recommend_many([1, 2], 5)


def test_promote_and_rollback(registry, models):
    v1 = registry.register("A", models[0], {}, {})
    v2 = registry.register("A", models[0], {}, {})
    registry.promote("A", v1)
    assert registry.promote("A", v2) == {"production": v2, "previous": v1}
    assert registry.rollback("A") == {"production": v1, "previous": v2}
    with pytest.raises(RegistryError):
        Registry(registry.root, registry.public_key, registry.private_key).rollback("B")


@pytest.mark.parametrize("attack", ["flip_byte", "edit_manifest", "missing_file",
                                    "extra_file", "swap_file", "drop_signature"])
def test_tampering_is_refused(registry, models, attack):
    v_other = registry.register("A", models[1], {}, {})
    v = registry.register("A", models[0], {}, {})
    folder = registry.root / "A" / v
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
        shutil.copy(registry.root / "A" / v_other / "model.npz", folder / "model.npz")
    elif attack == "drop_signature":
        (folder / "manifest.sig").unlink()
    with pytest.raises(RegistryError):
        registry.verify("A", v)
    with pytest.raises(RegistryError):
        registry.load("A", v)
    with pytest.raises(RegistryError):
        registry.promote("A", v)
    registry.verify("A", v_other)  # the untouched version still verifies


def test_signed_with_another_key_is_refused(registry, models, tmp_path):
    foreign_private, _ = ensure_keys(tmp_path / "other-keys")
    rogue = Registry(registry.root, registry.public_key, foreign_private)
    v = rogue.register("A", models[0], {}, {})
    with pytest.raises(RegistryError, match="signature"):
        registry.verify("A", v)


def test_read_only_registry_cannot_register(registry, models):
    reader = Registry(registry.root, registry.public_key)
    with pytest.raises(RegistryError):
        reader.register("A", models[0], {}, {})


def test_variant_answers_a_batch_as_it_answers_each_request(registry, models):
    from backend.serving.variant import VariantLogic

    registry.promote("A", registry.register("A", models[0], {}, {}))
    variant = VariantLogic(registry, "A")
    requests = [(1, 5), (2, 3), (1, 5), (999_999, 4), (2, 10)]  # repeats, a cold user, ks
    batch = variant.recommend_batch(requests)
    assert [r["items"] for r in batch] == [variant.recommend(u, k)["items"]
                                           for u, k in requests]
    assert [len(r["items"]) for r in batch] == [5, 3, 5, 4, 10]
    assert {r["model_version"] for r in batch} == {"v0001"}
