"""`reco quarantine list|release|flag`: review the spam quarantine from this machine's shell
(`backend.ops.cli` registers them). Releases and flags are audited as the admin API's are."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from backend.core.errors import RecoError
from backend.ops.cli_models import _audit, _settings, shell_actor

if TYPE_CHECKING:
    from registry.quarantine import QuarantineEntry


@click.group()
def quarantine() -> None:
    """The users training leaves out as spam: review, release, flag."""


@quarantine.command("list")
@click.option("--all", "everyone", is_flag=True, help="released users too")
def quarantine_list(everyone: bool) -> None:
    """One line per user: status, since, source, and why (reason or flagging detectors)."""
    from registry import open_quarantine

    for user, e in sorted(open_quarantine(_settings()).read().entries.items()):
        if everyone or e.status == "quarantined":
            click.echo(f"{user} {e.status} since={e.since:%Y-%m-%dT%H:%M:%SZ} "
                       f"source={e.source} why={e.why or '-'}")


@quarantine.command("release")
@click.argument("user", type=int)
@click.option("--reason", default=None, help="kept in the audit trail")
def quarantine_release(user: int, reason: str | None) -> None:
    """Let USER's events count again from the next retrain."""
    from registry import open_quarantine

    entry = _act(lambda: open_quarantine(_settings()).release(user, shell_actor(), reason))
    _audit("release", {"user_id": user, "reason": reason, "evidence": dict(entry.evidence)})


@quarantine.command("flag")
@click.argument("user", type=int)
@click.option("--reason", required=True, help="kept with the entry and in the audit trail")
def quarantine_flag(user: int, reason: str) -> None:
    """Quarantine USER by hand."""
    from registry import open_quarantine

    _act(lambda: open_quarantine(_settings()).flag(user, shell_actor(), reason))
    _audit("quarantine", {"user_id": user, "reason": reason})


def _act(change: Callable[[], QuarantineEntry]) -> QuarantineEntry:
    """The change, printed as JSON; a refusal's reason on stderr and exit status 1."""
    try:
        entry = change()
    except RecoError as exc:
        click.echo(exc.detail, err=True)
        sys.exit(1)
    click.echo(entry.model_dump_json())
    return entry
