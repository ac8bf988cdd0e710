"""Signed, versioned model registry."""

from __future__ import annotations

from backend.core.settings import Settings
from registry.accounts import AccountStore
from registry.experiments import ExperimentStore
from registry.manifest import Aliases, Decision, Manifest, Provenance
from registry.quarantine import QuarantineStore
from registry.signing import ensure_keys
from registry.store import Registry, RegistryError


def open_registry(settings: Settings, signer: bool = False) -> Registry:
    """The registry of `settings`; with `signer`, keys are created if missing."""
    reg = settings.registry
    assert reg.keys_dir is not None and reg.public_key is not None
    private = ensure_keys(reg.keys_dir)[0] if signer else None
    return Registry(settings.shared_store(), reg.public_key, private)


__all__ = ["AccountStore", "Aliases", "Decision", "ExperimentStore", "Manifest", "Provenance",
           "QuarantineStore", "Registry", "RegistryError", "open_accounts", "open_experiments",
           "open_quarantine", "open_registry"]


def open_experiments(settings: Settings) -> ExperimentStore:
    """The experiments and the audit log, kept beside the registry's variants."""
    return ExperimentStore(settings.shared_store())


def open_quarantine(settings: Settings) -> QuarantineStore:
    """The spam quarantine training reads and operators review."""
    return QuarantineStore(settings.shared_store())


def open_accounts(settings: Settings) -> AccountStore:
    """The operations console's accounts, beside the API keys (`var/keys/accounts.json`)."""
    assert settings.registry.keys_dir is not None
    return AccountStore(settings.registry.keys_dir / "accounts.json")
