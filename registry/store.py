"""Versioned, signed model store: `registry/<variant>/<version>/` in the shared store, plus
aliases per variant.

A version holds the model files, `manifest.json` (per-file SHA-256 and size, provenance,
offline metrics) and `manifest.sig` (Ed25519 over the manifest bytes). `register` claims the
next version by creating its manifest create-only, uploads the files, and writes the
signature last: a version is usable only once signed. `verify` checks the signature first,
then that the version holds exactly the listed files with the listed digests; `load` verifies
the bytes it fetched and deserialises those same bytes (from a private temporary folder),
never an unverified file. Aliases (`production`, `candidate`, `previous`) are a `Document`
(`aliases/`): each change is committed against the newest aliases, so a retrain's new
candidate and an operator's promote never undo one another (a registry written before reads
its `aliases.json` until the first change). Gate decisions are a `RecordLog` beside them
(`decisions/`, outside the signed versions).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from backend.core.errors import RecoError
from backend.core.layout import Keys
from backend.core.store import Document, RecordLog, Store
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
)

MANIFEST, SIGNATURE, ALIASES, DECISIONS = (
    "manifest.json", "manifest.sig", "aliases", "decisions")
OLD_ALIASES = "aliases.json"  # one object, replaced whole, before aliases were a Document
VERSION = re.compile(r"^v[0-9]{4,}$")


class RegistryError(RecoError):
    """A version that must not be used: unsigned, tampered, missing, or an unknown name."""

    status_code = 409


class Registry:
    def __init__(self, store: Store, public_key: Path, private_key: Path | None = None,
                 prefix: str = Keys.registry) -> None:
        self.store, self.prefix = store, prefix
        self.public_key = Path(public_key)
        self.private_key = private_key

    def key(self, variant: str, *parts: str) -> str:
        """The store key of a variant's object (`key("A", "v0001", "model.npz")`)."""
        return "/".join((self.prefix, variant, *parts))

    # -- writing ---------------------------------------------------------------------------

    def register(self, variant: str, model: Recommender, provenance: Provenance | None = None,
                 metrics: OfflineMetrics | None = None) -> str:
        """Save, hash, sign and publish a new version; returns its name. Without provenance
        or metrics (a model fitted outside the retrain pipeline) they are stored empty."""
        if self.private_key is None:
            raise RegistryError("no signing key configured: this registry is read-only")
        private = signing.load_private(self.private_key)
        with tempfile.TemporaryDirectory(prefix="reco-register-") as tmp:
            files = {p.name: p.read_bytes() for p in sorted(model.save(Path(tmp)))}
        digests = {name: FileDigest(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
                   for name, data in files.items()}
        taken = [int(v[1:]) for v in self.versions(variant)]
        number = max(taken, default=0) + 1
        while True:  # the manifest, created only if absent, claims the version
            version = f"v{number:04d}"
            manifest = Manifest(
                variant=variant, version=version, kind=model.kind,
                created_at=datetime.now(UTC), files=digests, params=model.params,
                metrics=metrics, provenance=provenance)
            payload = manifest.canonical()
            if self.store.put_new(self.key(variant, version, MANIFEST), payload):
                break
            number += 1
        for name, data in files.items():
            self.store.put(self.key(variant, version, name), data)
        self.store.put(self.key(variant, version, SIGNATURE), signing.sign(private, payload))
        self.set_alias(variant, "candidate", version)
        return version

    def aliases(self, variant: str) -> Aliases:
        current = Document(self.store, self.key(variant, ALIASES)).read()
        return self._old_aliases(variant) if current is None else \
            Aliases.model_validate(current)

    def _old_aliases(self, variant: str) -> Aliases:
        data = self.store.get(self.key(variant, OLD_ALIASES))
        return Aliases.model_validate_json(data) if data is not None else Aliases()

    def _edit_aliases(self, variant: str, change: Callable[[Aliases], Aliases]) -> Aliases:
        """Commit `change` of the newest aliases; after losing a race to another writer,
        change the aliases it committed. `change` may raise to refuse."""
        def edit(current: dict | None) -> dict[str, str]:
            base = self._old_aliases(variant) if current is None else \
                Aliases.model_validate(current)
            return change(base).named()

        return Aliases.model_validate(Document(self.store, self.key(variant, ALIASES))
                                      .edit(edit))

    def set_alias(self, variant: str, alias: str, version: str | None) -> None:
        if alias not in ALIAS_NAMES:
            raise RegistryError(f"unknown alias {alias!r}")
        self._edit_aliases(variant, lambda a: a.model_copy(update={alias: version}))

    def promote(self, variant: str, version: str) -> Aliases:
        """Make a verified version production; the old production becomes `previous`."""
        self.verify(variant, version)

        def change(aliases: Aliases) -> Aliases:
            production, previous = aliases.production, aliases.previous
            if production != version:
                previous, production = production or previous, version
            candidate = None if aliases.candidate == version else aliases.candidate
            return Aliases(candidate=candidate, previous=previous, production=production)

        return self._edit_aliases(variant, change)

    def rollback(self, variant: str) -> Aliases:
        """Swap production and previous (after verifying previous)."""
        def change(aliases: Aliases) -> Aliases:
            if not aliases.previous:
                raise RegistryError(f"{variant}: no previous version to roll back to")
            self.verify(variant, aliases.previous)
            return aliases.model_copy(update={"previous": aliases.production,
                                              "production": aliases.previous})

        return self._edit_aliases(variant, change)

    def decisions(self, variant: str) -> RecordLog:
        return self.store.log(self.key(variant, DECISIONS))

    def record_decision(self, variant: str, decision: Decision) -> None:
        self.decisions(variant).append(
            {"at": datetime.now(UTC).isoformat()} | decision.model_dump())

    # -- reading ---------------------------------------------------------------------------

    def variants(self) -> list[str]:
        """Variants holding versions or aliases (not `experiments/`, the audit log beside)."""
        out = []
        for name in self.store.children(self.prefix):
            if name.startswith(".") or name == "experiments":
                continue
            inside = self.store.children(f"{self.prefix}/{name}")
            if {ALIASES, OLD_ALIASES} & set(inside) or any(VERSION.match(n) for n in inside):
                out.append(name)
        return out

    def versions(self, variant: str) -> list[str]:
        return [n for n in self.store.children(f"{self.prefix}/{variant}") if VERSION.match(n)]

    def trained_lake_versions(self) -> dict[str, set[int]]:
        """Per lake topic, the table versions that the models the aliases name (production,
        previous, candidate: what serves or can be rolled back to) were trained on."""
        out: dict[str, set[int]] = {}
        for variant in self.variants():
            for version in {v for v in self.aliases(variant).named().values()}:
                prov = self.manifest(variant, version).provenance
                for topic, v in ((prov.lake.versions or {}) if prov else {}).items():
                    if v is not None:
                        out.setdefault(topic, set()).add(v)
        return out

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
        data = self.store.get(self.key(variant, self.resolve(variant, ref), MANIFEST))
        if data is None:
            raise RegistryError(f"{where}: no such version")
        return _parse(where, data)

    def stamp(self, variant: str, version: str) -> str:
        """A digest of the version's stored objects and their stamps (`Store.stamps`): it
        changes when a file is added, removed or rewritten, so a verdict of `verify` holds
        while it stays the same (the dashboard re-reads a version's files only then)."""
        stamps = sorted(self.store.stamps(self.key(variant, version)).items())
        return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()

    def verify(self, variant: str, ref: str) -> Manifest:
        """The manifest if signature and every file check out; RegistryError saying why not."""
        return self._verified(variant, ref)[0]

    def _verified(self, variant: str, ref: str) -> tuple[Manifest, dict[str, bytes]]:
        """The manifest and the bytes of every file it lists, all checked."""
        version = self.resolve(variant, ref)
        where = f"{variant}/{version}"
        if not VERSION.match(version):
            raise RegistryError(f"{where}: no such version")
        present = {k.rsplit("/", 1)[-1] for k in self.store.keys(self.key(variant, version))}
        if not present:
            raise RegistryError(f"{where}: no such version")
        payload = self.store.get(self.key(variant, version, MANIFEST))
        signature = self.store.get(self.key(variant, version, SIGNATURE))
        for name, data in ((MANIFEST, payload), (SIGNATURE, signature)):
            if data is None:
                raise RegistryError(f"{where}: missing {name}")
        assert payload is not None and signature is not None
        if not signing.valid(signing.load_public(self.public_key), payload, signature):
            raise RegistryError(f"{where}: manifest signature does not verify with "
                                f"{self.public_key.name}")
        manifest = _parse(where, payload)
        if manifest.variant != variant or manifest.version != version:
            raise RegistryError(f"{where}: manifest names {manifest.variant}/"
                                f"{manifest.version}")
        listed = set(manifest.files)
        present -= {MANIFEST, SIGNATURE}
        if present - listed:
            raise RegistryError(f"{where}: unexpected files {sorted(present - listed)}")
        if listed - present:
            raise RegistryError(f"{where}: missing files {sorted(listed - present)}")
        names = sorted(listed)
        contents = dict(zip(names, self.store.get_many(
            [self.key(variant, version, n) for n in names]), strict=True))
        for name in names:
            data = contents[name]
            if data is None or hashlib.sha256(data).hexdigest() != manifest.files[name].sha256:
                raise RegistryError(f"{where}: {name} does not match its digest")
        return manifest, {n: d for n, d in contents.items() if d is not None}

    def load(self, variant: str, ref: str = "production") -> tuple[Recommender, Manifest]:
        """Verify, then deserialise the very bytes verified. Never loads an unverified file."""
        manifest, contents = self._verified(variant, ref)
        with tempfile.TemporaryDirectory(prefix="reco-model-") as tmp:
            for name, data in contents.items():
                (Path(tmp) / name).write_bytes(data)
            return Recommender.load(Path(tmp)), manifest


def _parse(where: str, payload: bytes) -> Manifest:
    """The manifest model of stored bytes (json.loads: NaN metrics as Python writes them)."""
    try:
        return Manifest.model_validate(json.loads(payload))
    except ValueError as exc:  # not JSON, or not a manifest (pydantic's ValidationError)
        raise RegistryError(f"{where}: manifest does not parse ({exc})") from None
