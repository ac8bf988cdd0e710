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


@store.command("bucket")
@click.option("--wait", type=float, default=60.0, show_default=True,
              help="seconds to retry while the server comes up")
def store_bucket(wait: float) -> None:
    """Create the store's bucket unless it exists, on any S3 server (compose.yaml's head runs
    it before anything reads the store)."""
    import time

    from backend.ops.objectstore import ensure_bucket

    cfg = _settings().store
    if not cfg.is_s3:
        raise click.ClickException(f"the store {cfg.uri} is a local folder: no bucket")
    deadline = time.monotonic() + wait
    while True:
        try:
            created = ensure_bucket(cfg)
            break
        except OSError as exc:  # refused, or the gateway is up before its filer
            if time.monotonic() > deadline:
                raise click.ClickException(f"{cfg.endpoint_url}: {exc}") from None
            time.sleep(1)
    click.echo(f"bucket {cfg.bucket} {'created' if created else 'present'} "
               f"at {cfg.endpoint_url}")
