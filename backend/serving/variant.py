"""One model variant as served: the verified production version, hot-swapped when a newer
one is promoted, never replaced by a version that fails verification."""

from __future__ import annotations

import logging
import time

from backend.ml.recommenders import Recommender
from backend.ml.recommenders.noise import candidates, plackett_luce
from backend.serving.schemas import Knob, SharedExperiment, VariantAnswer, VariantStatus
from registry import Registry, RegistryError

log = logging.getLogger(__name__)


class VariantLogic:
    def __init__(self, registry: Registry, variant: str, temperature: float = 0.0) -> None:
        self.registry = registry
        self.variant = variant
        self.temperature = temperature  # answer noise (noise.py); 0: the ranking as is
        self.model: Recommender | None = None
        self.version: str | None = None
        self.refused: dict[str, str] = {}  # version -> why it was not loaded
        self.runtime: dict[str, Knob] = {}
        self.generation = -1  # of the shared run-time knobs last followed
        self.reload()

    def reload(self) -> bool:
        """Load the production alias if it changed; returns True when a new version serves."""
        try:
            wanted = self.registry.aliases(self.variant).production
        except (OSError, ValueError) as exc:
            log.error("aliases unreadable variant=%s error=%s", self.variant, exc)
            return False
        if wanted is None or wanted == self.version or wanted in self.refused:
            return False
        try:
            model, manifest = self.registry.load(self.variant, wanted)
        except RegistryError as exc:
            self.refused[wanted] = exc.detail
            log.error("refused model variant=%s version=%s reason=%s serving=%s",
                      self.variant, wanted, exc.detail, self.version)
            return False
        if self.runtime and hasattr(model, "set_params"):
            model.set_params(**self.runtime)
        self.model, self.version = model, manifest.version
        log.info("serving variant=%s version=%s", self.variant, self.version)
        return True

    def configure(self, runtime: dict[str, Knob]) -> None:
        """Run-time knobs (Model B's diversity strengths), kept across reloads."""
        self.runtime = dict(runtime)
        if self.model is not None and hasattr(self.model, "set_params") and runtime:
            self.model.set_params(**runtime)

    def follow(self, shared: SharedExperiment) -> None:
        """The shared experiment config (ServingState's `config()`): its run-time knobs, once
        per change (`generation`), so that every replica of the variant applies them."""
        if shared.generation != self.generation and shared.b_runtime:
            self.configure(shared.b_runtime)
        self.generation = shared.generation

    def recommend(self, user_id: int, k: int) -> VariantAnswer:
        return self.recommend_batch([(user_id, k)])[0]

    def recommend_batch(self, requests: list[tuple[int, int]]) -> list[VariantAnswer]:
        """One answer per (user_id, k), all from the same version (one vectorised scoring per
        distinct k: the ingress coalesces concurrent requests into one call)."""
        model, version = self.model, self.version  # a reload may swap them meanwhile
        if model is None or version is None:
            raise RegistryError(f"variant {self.variant} has no verified production model")
        t0 = time.perf_counter()
        by_k: dict[int, list[int]] = {}
        for user_id, k in requests:
            by_k.setdefault(int(k), []).append(int(user_id))
        if self.temperature > 0:
            items = {k: {u: plackett_luce(ranked, k, self.temperature, f"{version}/{u}")
                         for u, ranked in model.recommend_many(users, candidates(k)).items()}
                     for k, users in by_k.items()}
        else:
            items = {k: model.recommend_many(users, k) for k, users in by_k.items()}
        ms = (time.perf_counter() - t0) * 1000
        return [VariantAnswer(items=items[int(k)][int(u)], variant=self.variant,
                              model_version=version, model_ms=ms) for u, k in requests]

    def status(self) -> VariantStatus:
        return VariantStatus(variant=self.variant, version=self.version,
                             refused=dict(self.refused), runtime=dict(self.runtime))
