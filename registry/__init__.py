"""Signed, versioned model registry."""

from __future__ import annotations

from backend.core.settings import Settings
from registry.manifest import Aliases, Decision, Manifest, Provenance
from registry.signing import ensure_keys
from registry.store import Registry, RegistryError


def open_registry(settings: Settings, signer: bool = False) -> Registry:
    """The registry of `settings`; with `signer`, keys are created if missing."""
    reg = settings.registry
    assert reg.root is not None and reg.keys_dir is not None and reg.public_key is not None
    private = ensure_keys(reg.keys_dir)[0] if signer else None
    return Registry(reg.root, reg.public_key, private)


__all__ = ["Aliases", "Decision", "Manifest", "Provenance", "Registry", "RegistryError",
           "open_registry"]
