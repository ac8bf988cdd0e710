"""`reco store start|stop|status`: the embedded S3 server (SeaweedFS), run only when the store
URI points at it (an `s3://` URI with no endpoint)."""

from __future__ import annotations

import json
import sys

import click

from backend.ops.cli_models import _settings


def _embedded():
    from backend.ops.objectstore import EmbeddedObjectStore

    s = _settings()
    if not s.store.embedded:
        where = "a local folder" if not s.store.is_s3 else f"S3 at {s.store.endpoint_url}"
        raise click.ClickException(f"the store {s.store.uri} is {where}; the embedded S3 "
                                   "server is not used (set RECO_STORE__URI=s3://bucket/prefix)")
    return EmbeddedObjectStore(s)


@click.group()
def store() -> None:
    """The embedded S3 server that holds the shared state when RECO_STORE__URI is s3://..."""


@store.command("start")
def store_start() -> None:
    e = _embedded()
    was = e.pid()
    pid = e.start()
    click.echo(f"store {'already running' if was else 'started'} pid={pid} "
               f"endpoint={e.cfg.endpoint_url} bucket={e.cfg.bucket}")


@store.command("stop")
def store_stop() -> None:
    click.echo("store stopped" if _embedded().stop() else "store was not running")


@store.command("status")
def store_status() -> None:
    st = _embedded().status()
    click.echo(json.dumps(st))
    sys.exit(0 if st["running"] else 3)
