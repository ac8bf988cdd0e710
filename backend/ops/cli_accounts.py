"""`reco accounts add|list|remove`: who may sign in to the operations console (viewers see,
operators act). Changes are audited; passwords never appear in arguments or logs."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import click

from backend.core.errors import RecoError
from backend.core.settings import Settings
from backend.ops.cli_models import _audit, _settings

FIRST_ACCOUNT = "admin"


@click.group()
def accounts() -> None:
    """Console accounts: viewers see every page, operators also act."""


@accounts.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["viewer", "operator"]), default="viewer",
              show_default=True)
@click.option("--password-stdin", is_flag=True,
              help="read the password from standard input (default: ask twice)")
def accounts_add(name: str, role: str, password_stdin: bool) -> None:
    """Add the account NAME with a password of at least 12 characters."""
    from registry import open_accounts

    password = (sys.stdin.readline().rstrip("\n") if password_stdin else
                click.prompt("password", hide_input=True, confirmation_prompt=True))
    try:
        open_accounts(_settings()).add(name, role, password)  # type: ignore[arg-type]
    except (RecoError, ValueError) as exc:
        click.echo(getattr(exc, "detail", str(exc)), err=True)
        sys.exit(1)
    _audit("account_add", {"account": name, "role": role})
    click.echo(f"added {name} ({role})")


@accounts.command("list")
def accounts_list() -> None:
    """One line per account: name, role, created."""
    from registry import open_accounts

    for a in open_accounts(_settings()).accounts().values():
        click.echo(f"{a.name} {a.role} created={a.created:%Y-%m-%dT%H:%M:%SZ}")


@accounts.command("remove")
@click.argument("name")
def accounts_remove(name: str) -> None:
    """Remove NAME; its sessions stop working at once."""
    from registry import open_accounts

    try:
        open_accounts(_settings()).remove(name)
    except RecoError as exc:
        click.echo(exc.detail, err=True)
        sys.exit(1)
    _audit("account_remove", {"account": name})
    click.echo(f"removed {name}")


def first_password_path(settings: Settings) -> Path:
    """Where `ensure_first_account` leaves the `admin` operator's password (0600)."""
    assert settings.registry.keys_dir is not None  # filled in by Settings
    return settings.registry.keys_dir / "console-admin.password"


def ensure_first_account(settings: Settings) -> str | None:
    """With no account yet, an operator account `admin` whose random password goes to
    `var/keys/console-admin.password` (0600); returns that file's path, or None."""
    import os

    from registry import open_accounts

    store = open_accounts(settings)
    if store.accounts():
        return None
    path = first_password_path(settings)
    password = secrets.token_urlsafe(18)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    os.write(fd, password.encode())
    os.close(fd)
    store.add(FIRST_ACCOUNT, "operator", password)
    return str(path)
