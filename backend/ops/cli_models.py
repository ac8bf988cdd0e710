"""`reco train`, `reco evaluate` and `reco models ...`: the model commands of the CLI
(`backend.ops.cli` registers them). Imports stay inside the commands, as in `cli`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from backend.core.settings import Settings

if TYPE_CHECKING:
    from pydantic import JsonValue

    from registry import Registry
    from registry.experiments import ExperimentStore, OperatorAction


def _settings() -> Settings:
    return Settings()


@click.command()
def train() -> None:
    """Retrain A and B from the lake, evaluate, register signed candidates, gate, promote."""
    from backend.core.runtime import init_ray
    from backend.training.retrain import retrain

    s = _settings()
    init_ray(s)
    for variant, r in retrain(s).items():
        m = r.metrics
        verdict = "promoted" if r.promoted else "refused: " + "; ".join(r.reasons)
        click.echo(f"{variant} {r.version}: ndcg@{m.k}={m.ndcg:.4f} recall={m.recall:.4f} "
                   f"coverage={m.coverage:.3f} gini={m.gini:.3f} -> {verdict}")


@click.command()
def evaluate() -> None:
    """Evaluate the production models and a popularity baseline on the lake's temporal split
    (the retrain pipeline's training set and evaluation)."""
    from backend.training.dataset import evaluate_production

    columns = ("ndcg", "recall", "map", "coverage", "gini", "novelty", "aplt")
    scored = evaluate_production(_settings())
    click.echo(f"{'model':<16}" + "".join(f"{c:>10}" for c in columns))
    for row in scored:
        values = row.metrics.model_dump()
        click.echo(f"{row.name:<16}" + "".join(f"{values[c]:>10.4f}" for c in columns))


@click.group()
def models() -> None:
    """The signed model registry."""


def _registry(signer: bool = False) -> Registry:
    from registry import open_registry

    return open_registry(_settings(), signer=signer)


@models.command("list")
def models_list() -> None:
    reg = _registry()
    for variant in reg.variants():
        aliases = reg.aliases(variant)
        for version in reg.versions(variant):
            tags = ",".join(aliases.tags(version))
            m = reg.manifest(variant, version).metrics  # None: registered without metrics
            ndcg, coverage, gini = (m.ndcg, m.coverage, m.gini) if m else (0, 0, 0)
            click.echo(f"{variant} {version} {tags or '-':<22} ndcg={ndcg:.4f} "
                       f"coverage={coverage:.3f} gini={gini:.3f}")


@models.command("show")
@click.argument("variant")
@click.argument("ref", default="production")
def models_show(variant: str, ref: str) -> None:
    click.echo(json.dumps(_registry().manifest(variant, ref).model_dump(), indent=2,
                          sort_keys=True))


@models.command("verify")
@click.argument("variant", required=False)
@click.argument("ref", required=False)
def models_verify(variant: str | None, ref: str | None) -> None:
    """Verify signatures and digests; exit status 1 if anything fails."""
    from registry import RegistryError

    reg = _registry()
    failed = 0
    for v in [variant] if variant else reg.variants():
        for version in [ref] if ref else reg.versions(v):
            try:
                reg.verify(v, version)
                click.echo(f"ok     {v}/{version}")
            except RegistryError as exc:
                failed += 1
                click.echo(f"FAILED {exc.detail}")
    sys.exit(1 if failed else 0)


@models.command("promote")
@click.argument("variant")
@click.argument("version")
def models_promote(variant: str, version: str) -> None:
    """Verify, then make VERSION production (audited, as the admin API's promotions are;
    refused while the running experiment pins the variant at another version)."""
    _experiments().check_unpinned(variant, version)
    aliases = _registry().promote(variant, version)
    click.echo(json.dumps(aliases.named()))  # done, whatever the audit write meets
    _audit("promote", {"variant": variant, "version": version})


@models.command("rollback")
@click.argument("variant")
def models_rollback(variant: str) -> None:
    _experiments().check_unpinned(variant, None)
    aliases = _registry().rollback(variant)
    click.echo(json.dumps(aliases.named()))
    _audit("rollback", {"variant": variant, "version": aliases.production})


def _experiments() -> ExperimentStore:
    from registry import open_experiments

    return open_experiments(_settings())


def shell_actor() -> str:
    """Who acts from this machine's shell: the OS account the process runs as (not $USER,
    which the caller sets)."""
    import os
    import pwd

    return f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"


def _audit(action: OperatorAction, detail: dict[str, JsonValue]) -> None:
    """An operator action from this machine's shell, in the audit trail."""
    _experiments().record(action, shell_actor(), detail)


# -- serving ------------------------------------------------------------------------------
