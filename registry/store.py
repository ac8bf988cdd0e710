"""Versioned, signed model store: `<root>/<variant>/<version>/` plus aliases per variant.

A version folder holds the model files, `manifest.json` (per-file SHA-256 and size,
provenance, offline metrics) and `manifest.sig` (Ed25519 over the manifest bytes). `verify`
checks the signature first, then that the folder holds exactly the listed files with the
listed digests; `load` verifies before it deserialises anything. Aliases (`production`,
`candidate`, `previous`) live in `aliases.json`, replaced atomically. Gate decisions are
appended to `decisions.jsonl` beside them (outside the signed folders).
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from backend.core.errors import RecoError
from backend.core.files import atomic_write
from backend.core.hashing import sha256_file
from backend.ml.recommenders import Recommender
from backend.ml.results import OfflineMetrics
from registry import signing
from registry.manifest import (
    ALIAS_NAMES,
    Aliases,
    Decision,
    FileDigest,
    Manifest,
    Provenance,
    canonical_json,
)

MANIFEST, SIGNATURE, ALIASES, DECISIONS = (
    "manifest.json", "manifest.sig", "aliases.json", "decisions.jsonl")


class RegistryError(RecoError):
    """A version that must not be used: unsigned, tampered, missing, or an unknown name."""

    status_code = 409


class Registry:
    def __init__(self, root: Path, public_key: Path, private_key: Path | None = None) -> None:
        self.root = Path(root)
        self.public_key = Path(public_key)
        self.private_key = private_key

    # -- writing ---------------------------------------------------------------------------

    def register(self, variant: str, model: Recommender, provenance: Provenance | None = None,
                 metrics: OfflineMetrics | None = None) -> str:
        """Save, hash, sign and publish a new version; returns its name. Without provenance
        or metrics (a model fitted outside the retrain pipeline) they are stored empty."""
        if self.private_key is None:
            raise RegistryError("no signing key configured: this registry is read-only")
        base = self.root / variant
        base.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in base.glob("v*") if p.name[1:].isdigit()]
        version = f"v{max(existing, default=0) + 1:04d}"
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        files = model.save(tmp)
        manifest = Manifest(
            variant=variant, version=version, kind=model.kind, created_at=datetime.now(UTC),
            files={p.name: FileDigest(sha256=sha256_file(p), bytes=p.stat().st_size)
                   for p in sorted(files)},
            params=model.params, metrics=metrics, provenance=provenance)
        payload = manifest.canonical()
        (tmp / MANIFEST).write_bytes(payload)
        (tmp / SIGNATURE).write_bytes(
            signing.sign(signing.load_private(self.private_key), payload))
        os.replace(tmp, base / version)
        self.set_alias(variant, "candidate", version)
        return version

    def aliases(self, variant: str) -> Aliases:
        path = self.root / variant / ALIASES
        return Aliases.model_validate_json(path.read_bytes()) if path.exists() else Aliases()

    def _write_aliases(self, variant: str, aliases: Aliases) -> None:
        atomic_write(self.root / variant / ALIASES, canonical_json(aliases.named()))

    def set_alias(self, variant: str, alias: str, version: str | None) -> None:
        if alias not in ALIAS_NAMES:
            raise RegistryError(f"unknown alias {alias!r}")
        self._write_aliases(variant, self.aliases(variant).model_copy(update={alias: version}))

    def promote(self, variant: str, version: str) -> Aliases:
        """Make a verified version production; the old production becomes `previous`."""
        self.verify(variant, version)
        aliases = self.aliases(variant)
        production, previous, candidate = aliases.production, aliases.previous, aliases.candidate
        if production != version:
            if production:
                previous = production
            production = version
        if candidate == version:
            candidate = None
        aliases = Aliases(candidate=candidate, previous=previous, production=production)
        self._write_aliases(variant, aliases)
        return aliases

    def rollback(self, variant: str) -> Aliases:
        """Swap production and previous (after verifying previous)."""
        aliases = self.aliases(variant)
        previous = aliases.previous
        if not previous:
            raise RegistryError(f"{variant}: no previous version to roll back to")
        self.verify(variant, previous)
        aliases = aliases.model_copy(update={"previous": aliases.production,
                                             "production": previous})
        self._write_aliases(variant, aliases)
        return aliases

    def record_decision(self, variant: str, decision: Decision) -> None:
        line = json.dumps({"at": datetime.now(UTC).isoformat()} | decision.model_dump(),
                          sort_keys=True)
        with open(self.root / variant / DECISIONS, "a") as fh:
            fh.write(line + "\n")

    # -- reading ---------------------------------------------------------------------------

    def variants(self) -> list[str]:
        """Folders holding versions or aliases (not `experiments/`, the audit log beside)."""
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()
                      and not p.name.startswith(".")
                      and ((p / ALIASES).exists() or any(p.glob("v[0-9]*"))))

    def versions(self, variant: str) -> list[str]:
        base = self.root / variant
        return sorted(p.name for p in base.glob("v*") if p.is_dir()) if base.exists() else []

    def resolve(self, variant: str, ref: str) -> str:
        """A version name from a version or an alias."""
        if ref in ALIAS_NAMES:
            version = self.aliases(variant).get(ref)
            if not version:
                raise RegistryError(f"{variant}: no {ref} version")
            return version
        return ref

    def manifest(self, variant: str, ref: str) -> Manifest:
        """The manifest as stored (unverified: use `verify` before trusting it)."""
        where = f"{variant}/{ref}"
        path = self.root / variant / self.resolve(variant, ref) / MANIFEST
        if not path.exists():
            raise RegistryError(f"{where}: no such version")
        return _parse(where, path.read_bytes())

    def verify(self, variant: str, ref: str) -> Manifest:
        """The manifest if signature and every file check out; RegistryError saying why not."""
        version = self.resolve(variant, ref)
        folder = self.root / variant / version
        where = f"{variant}/{version}"
        if not folder.is_dir():
            raise RegistryError(f"{where}: no such version")
        try:
            payload = (folder / MANIFEST).read_bytes()
            signature = (folder / SIGNATURE).read_bytes()
        except FileNotFoundError as exc:
            raise RegistryError(f"{where}: missing {Path(exc.filename).name}") from None
        if not signing.valid(signing.load_public(self.public_key), payload, signature):
            raise RegistryError(f"{where}: manifest signature does not verify with "
                                f"{self.public_key.name}")
        manifest = _parse(where, payload)
        if manifest.variant != variant or manifest.version != version:
            raise RegistryError(f"{where}: manifest names {manifest.variant}/"
                                f"{manifest.version}")
        listed = set(manifest.files)
        present = {p.name for p in folder.iterdir()} - {MANIFEST, SIGNATURE}
        if present - listed:
            raise RegistryError(f"{where}: unexpected files {sorted(present - listed)}")
        if listed - present:
            raise RegistryError(f"{where}: missing files {sorted(listed - present)}")
        for name, meta in manifest.files.items():
            if sha256_file(folder / name) != meta.sha256:
                raise RegistryError(f"{where}: {name} does not match its digest")
        return manifest

    def load(self, variant: str, ref: str = "production") -> tuple[Recommender, Manifest]:
        """Verify, then deserialise. Never loads an unverified file."""
        manifest = self.verify(variant, ref)
        folder = self.root / variant / manifest.version
        return Recommender.load(folder), manifest


def _parse(where: str, payload: bytes) -> Manifest:
    """The manifest model of stored bytes (json.loads: NaN metrics as Python writes them)."""
    try:
        return Manifest.model_validate(json.loads(payload))
    except ValueError as exc:  # not JSON, or not a manifest (pydantic's ValidationError)
        raise RegistryError(f"{where}: manifest does not parse ({exc})") from None
