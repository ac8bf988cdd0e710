"""`reco`: the platform's one command line. Settings are built here, per invocation.

Each command imports what it uses inside its body: `reco --help` and `reco status` start in
about half a second instead of the 4-5 s that importing the analytics, Kafka and Ray stacks
costs (import-linter reads these imports all the same)."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from backend.core.errors import RecoError
from backend.core.logs import setup_logging
from backend.core.settings import Settings
from backend.ops import (
    cli_accounts,
    cli_experiments,
    cli_models,
    cli_quarantine,
    cli_store,
    cli_topics,
)


def _settings() -> Settings:
    return Settings()


class _Group(click.Group):
    """Platform errors end the command with their message, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RecoError as exc:
            raise click.ClickException(exc.detail) from None


@click.group(cls=_Group)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (env RECO_LOG_LEVEL)")
def main(log_level: str | None) -> None:
    """Movie recommender platform."""
    setup_logging(log_level)


# -- broker -------------------------------------------------------------------------------


@main.group()
def broker() -> None:
    """The embedded Kafka-protocol broker (used when no bootstrap server is configured)."""


def _embedded():
    from backend.ops.broker import EmbeddedBroker

    s = _settings()
    if not s.kafka.embedded:
        raise click.ClickException(f"a Kafka cluster is configured ({s.kafka.servers}); "
                                   "the embedded broker is not used")
    return s, EmbeddedBroker(s.kafka, s.run_dir)


@broker.command("start")
def broker_start() -> None:
    from backend.data.kafka import ensure_topics

    s, b = _embedded()
    was = b.pid()
    pid = b.start()
    created = ensure_topics(s.kafka)
    click.echo(f"broker {'already running' if was else 'started'} pid={pid} address={b.address}"
               f" topics_created={created}")


@broker.command("serve")
@click.option("--listen", default="0.0.0.0:9092", show_default=True, metavar="HOST:PORT",
              help="where the broker listens")
@click.option("--advertise", required=True, metavar="HOST:PORT",
              help="the address clients are told to use (the service's name on the network)")
def broker_serve(listen: str, advertise: str) -> None:
    """The broker in the foreground, as a container's one process (compose.yaml's broker):
    memory storage like the embedded one, but on any address, not only loopback."""
    import os

    from backend.ops.broker import broker_command

    cmd = broker_command(f"tcp://{listen}", f"tcp://{advertise}")
    os.execv(cmd[0], cmd)


@broker.command("stop")
def broker_stop() -> None:
    _, b = _embedded()
    click.echo("broker stopped" if b.stop() else "broker was not running")


@broker.command("status")
def broker_status() -> None:
    _, b = _embedded()
    st = b.status()
    click.echo(json.dumps(st))
    sys.exit(0 if st["running"] else 3)


# -- data, lake, jobs ---------------------------------------------------------------------


@main.group()
def data() -> None:
    """MovieLens-100K."""


@data.command("fetch")
def data_fetch() -> None:
    from backend.data.movielens import load

    ml = load(_settings().data_cache)
    click.echo(f"MovieLens-100K: ratings={len(ml.ratings)} items={len(ml.items)} "
               f"users={len(ml.users)}")


@main.group()
def lake() -> None:
    """The event lake: a Delta table per topic in the shared store."""


@lake.command("stats")
@click.option("--json", "as_json", is_flag=True)
def lake_stats(as_json: bool) -> None:
    from backend.data.lake import Lake

    stats = Lake.open(_settings()).stats()
    if as_json:
        click.echo(json.dumps(stats, default=str))
        return
    click.echo(f"{'topic':<22}{'rows':>10}{'files':>8}{'version':>9}  newest event")
    for topic, st in stats.items():
        version = "-" if st["version"] is None else st["version"]
        click.echo(f"{topic:<22}{st['rows']:>10}{st['files']:>8}{version:>9}  "
                   f"{st['newest_ts'] or '-'}")


def _topics(names: tuple[str, ...]) -> list[str]:
    from backend.data.events import EVENT_MODELS

    unknown = sorted(set(names) - set(EVENT_MODELS))
    if unknown:
        raise click.BadParameter(f"unknown topics {unknown}; the lake's: {sorted(EVENT_MODELS)}")
    return list(names) or list(EVENT_MODELS)


@lake.command("compact")
@click.argument("topics", nargs=-1)
def lake_compact(topics: tuple[str, ...]) -> None:
    """Rewrite each landing date's small files into large ones (every topic, or TOPICS)."""
    from backend.data.lake import Lake

    lake = Lake.open(_settings())
    for topic in _topics(topics):
        result = lake.compact(topic)
        click.echo(f"{topic}: files removed={result.get('numFilesRemoved', 0)} "
                   f"added={result.get('numFilesAdded', 0)} version={lake.version(topic)}")


DURATION = re.compile(r"^(\d+)([dhm]?)$")


@lake.command("vacuum")
@click.argument("topics", nargs=-1)
@click.option("--older-than", "older_than", default="7d", show_default=True,
              help="keep what versions newer than this need: 7d, 12h, 30m, 0")
@click.option("--dry-run", is_flag=True, help="list the files, delete nothing")
def lake_vacuum(topics: tuple[str, ...], older_than: str, dry_run: bool) -> None:
    """Delete data files that no table version newer than --older-than needs, except the
    versions the registry's production, previous and candidate models were trained on (so
    their training data can still be read back)."""
    from datetime import timedelta

    from backend.data.lake import Lake
    from registry import open_registry

    match = DURATION.match(older_than)
    if not match:
        raise click.BadParameter(f"{older_than!r}: give a number and d, h or m (7d, 12h, 0)")
    unit = {"d": "days", "h": "hours", "m": "minutes", "": "days"}[match[2]]
    age = timedelta(**{unit: int(match[1])})
    settings = _settings()
    lake, kept = Lake.open(settings), open_registry(settings).trained_lake_versions()
    for topic in _topics(topics):
        gone = lake.vacuum(topic, age, sorted(kept.get(topic, ())), dry_run=dry_run)
        click.echo(f"{topic}: {'would delete' if dry_run else 'deleted'} {len(gone)} files; "
                   f"kept versions {sorted(kept.get(topic, ())) or '-'}")


@main.group()
def dlq() -> None:
    """Dead letters: what the ingest job refused, and why."""


def _dead_letters():
    from backend.data.deadletters import DeadLetters
    from backend.data.lake import Lake

    return DeadLetters(Lake.open(_settings()))


@dlq.command("list")
@click.option("--topic", help="only dead letters from this topic")
@click.option("--contains", help="only errors containing this text")
def dlq_list(topic: str | None, contains: str | None) -> None:
    """Counts by source topic and reason (the reason's first line)."""
    counts = _dead_letters().counts(topic, contains)
    for row in counts.reasons:
        click.echo(f"{row.count:>8}  {row.source_topic:<14}  {row.reason}")
    click.echo(f"{counts.total:>8}  total")


@dlq.command("replay")
@click.option("--topic", help="only dead letters from this topic")
@click.option("--contains", help="only errors containing this text")
@click.option("--yes", is_flag=True, help="do it (default: say what would be replayed)")
def dlq_replay(topic: str | None, contains: str | None, yes: bool) -> None:
    """Produce the raw messages back to their source topics (after a fix upstream or a
    contract change): the ingest job validates them again, lands the valid ones (deduplicated
    by event_id) and dead-letters the rest again. Audited."""
    from backend.data.kafka import EventProducer

    letters = _dead_letters()
    if not yes:
        click.echo(f"would replay {letters.counts(topic, contains).replayable} dead letters; "
                   "add --yes")
        return
    s = _settings()
    producer = EventProducer(s.kafka, s.wal_dir / "cli")
    try:
        n = letters.replay(producer.send_raw, topic, contains)
    finally:
        producer.close()
    cli_models._audit("dlq_replay", {"topic": topic, "contains": contains, "replayed": n})
    click.echo(f"replayed {n} dead letters")


@main.command()
@click.option("--once", is_flag=True, help="stop once the topics are drained")
@click.option("--actors", type=int, default=None, help="default: one per partition")
@click.option("--course-topic", default=None, metavar="NAME",
              help="also read this external topic of course-format lines")
def ingest(once: bool, actors: int | None, course_topic: str | None) -> None:
    """Run the ingest job (Kafka -> validated, deduplicated lake) on Ray."""
    from backend.core.runtime import init_ray
    from jobs.ingest import run

    s = _settings()
    if course_topic:
        s = s.model_copy(update={"ingest": s.ingest.model_copy(
            update={"course_topic": course_topic})})
    init_ray(s)
    stats = run(s, once=once, actors=actors)
    click.echo(json.dumps(stats))


@main.command()
@click.option("--wait", type=float, default=600.0, help="seconds to wait for the lake (0: no)")
def bootstrap(wait: float) -> None:
    """Publish MovieLens-100K history to Kafka; wait until the ingest job has landed it."""
    from backend.data.lake import Lake
    from jobs.bootstrap import publish, wait_landed

    s = _settings()
    ids = publish(s)
    click.echo(f"published: {', '.join(f'{t}={len(v)}' for t, v in ids.items())}")
    if wait:
        missing = wait_landed(Lake.open(s), ids, wait)
        click.echo(f"missing from the lake: {missing}")
        if any(missing.values()):
            raise click.ClickException("not all events landed; is the ingest job running?")


@main.command()
@click.argument("source", type=click.File("r"), default="-")
def produce(source) -> None:
    """Produce course-format log lines (rate, watch, recommendation request; movies by id
    or slug) from a file or stdin; a line that is not one, or names an unknown movie, goes
    to the DLQ with the reason."""
    from backend.data.catalog import load_catalog
    from backend.data.course import LineFormatError, SlugIndex, parse_line
    from backend.data.events import DlqEvent
    from backend.data.kafka import EventProducer

    s = _settings()
    index = SlugIndex(load_catalog(s))
    producer = EventProducer(s.kafka, s.wal_dir / "cli")
    sent = bad = 0
    try:
        for lineno, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                topic, record = parse_line(line, index)
            except LineFormatError as exc:  # dead-lettered, not dropped
                bad += 1
                producer.send("events.dlq", DlqEvent(
                    source_topic="course-lines", partition=-1, offset=lineno,
                    raw=line[:8192], error=str(exc)[:4096]))
                continue
            producer.send(topic, record)
            sent += 1
    finally:
        producer.close()
    click.echo(f"produced={sent} refused={bad}")


# -- simulate, analyze ----------------------------------------------------------------


@main.command()
@click.option("--rps", type=float, default=None, help="user visits per second")
@click.option("--duration", type=float, default=None, help="seconds; then it stops")
@click.option("--seed", type=int, default=None)
@click.option("--url", default=None, help="loopback API URL (default: the local serve port)")
def simulate(rps: float | None, duration: float | None, seed: int | None,
             url: str | None) -> None:
    """Closed-loop simulated users against the HTTP API (bounded, seeded, loopback only)."""
    from jobs.simulate import simulate as run

    click.echo(json.dumps(run(_settings(), rps, duration, seed, url)))


@main.command()
@click.option("--once", is_flag=True, help="one snapshot now (default: every interval)")
def analyze(once: bool) -> None:
    """Analytics snapshot(s) from the lake into var/analytics/ (the scheduler runs them)."""
    from backend.analytics.cycle import analyze_once, probe
    from jobs import analyze as analyze_job

    if once:
        s = _settings()
        snap = analyze_once(s, split=probe(s).split)
        click.echo(json.dumps(snap.model_dump(mode="json",
                                              include={"window", "counts", "compute_seconds"})))
        return
    analyze_job.main([])


@main.group("serve")
def serve_group() -> None:
    """The Ray Serve application (API on serve.host:serve.port)."""


@serve_group.command("start")
@click.option("--wait", type=float, default=120.0, help="seconds to wait for /health")
def serve_start(wait: float) -> None:
    import time

    import httpx
    from ray import serve

    from backend.core.runtime import init_ray
    from backend.serving.auth import ensure_local_keys
    from backend.serving.deploy import APP, deploy

    s = ensure_local_keys(_settings())
    deploy(s, init_ray(s).dashboard_url or "")
    url = f"http://{s.serve.host}:{s.serve.port}/health"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            health = httpx.get(url, timeout=5).json()
            click.echo(f"serving {url}: {json.dumps(health)}")
            return
        except (httpx.HTTPError, ValueError):
            time.sleep(1)
    status = serve.status().applications.get(APP)
    detail = f"{status.status}: {status.message}" if status else "not deployed"
    raise click.ClickException(f"{url} did not answer within {wait}s ({detail})")


@serve_group.command("stop")
def serve_stop() -> None:
    from ray import serve

    from backend.core.runtime import init_ray

    init_ray(_settings())
    serve.delete("reco")
    click.echo("serve application deleted")


@main.command()
@click.option("--port", type=int, default=None, help="default: the dashboard_port setting")
@click.option("--host", default=None, help="bind address; default: the dashboard_host setting")
def dashboard(port: int | None, host: str | None) -> None:
    """The Streamlit operations dashboard (blocks; Ctrl-C stops it)."""
    import subprocess

    from backend.ops.platform import dashboard_command

    s = _settings()
    raise SystemExit(subprocess.call(dashboard_command(port or s.dashboard_port,
                                                       host or s.dashboard_host)))


@main.command()
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
              default=None, help="the period's start (UTC; default: everything on record)")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="folder to write to (default: var/reports/<now>)")
@click.option("--no-pdf", is_flag=True, help="skip printing the PDF with chromium")
def report(since: datetime | None, out_dir: Path | None, no_pdf: bool) -> None:
    """The operations report (HTML with charts, its numbers as JSON, PDF) from the lake's
    analytics, the registry and the audit trail."""
    from dashboard.report import write_report

    s = _settings()
    since = since.replace(tzinfo=UTC) if since is not None else None
    out = out_dir or s.var_dir / "reports" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        paths = write_report(s, out, since, pdf=not no_pdf)
    except FileNotFoundError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")


@main.command("config-doc")
def config_doc() -> None:
    """Print the configuration reference (docs/configuration.md) generated from Settings."""
    from backend.ops.configdoc import render

    click.echo(render(), nl=False)


@main.command("demo-record")
def demo_record() -> None:
    """Record the dashboard walkthrough (video, GIF, captions) into var/demo/ (needs `make up`
    and Debian's chromium and ffmpeg: `make demo` installs them)."""
    from backend.ops.demo import record

    click.echo(json.dumps(record(_settings())))


# -- the platform -------------------------------------------------------------------------


@main.command()
@click.option("--no-sim", is_flag=True, help="do not start the background simulator")
@click.option("--no-dashboard", is_flag=True,
              help="do not start the dashboard (it runs elsewhere: compose.yaml)")
@click.option("--wait", type=float, default=180.0, help="seconds to wait for every part")
def up(no_sim: bool, no_dashboard: bool, wait: float) -> None:
    """Start the platform with embedded defaults (idempotent), wait until it is healthy."""
    from backend.ops import platform

    platform.up(_settings(), echo=click.echo, sim=not no_sim, wait=wait,
                dashboard=not no_dashboard)


@main.command("compose-secrets")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), default="secrets")
def compose_secrets(folder: Path) -> None:
    """Create the secret files compose.yaml mounts, where missing (0600, in FOLDER)."""
    from backend.ops.containers import write_compose_secrets

    for path in write_compose_secrets(folder):
        click.echo(f"wrote {path}")
    click.echo(f"the containers run as uid 10001: chown -R 10001:10001 {folder}")


@main.command()
def down() -> None:
    """Stop what `up` started; `var/` stays."""
    from backend.ops import platform

    platform.down(_settings(), echo=click.echo)


@main.command()
def status() -> None:
    """Each component's state."""
    from backend.ops import platform

    click.echo(json.dumps(platform.status(_settings()), indent=2, default=str))


for _command in (cli_models.train, cli_models.evaluate, cli_models.models,
                 cli_experiments.experiment, cli_quarantine.quarantine,
                 cli_accounts.accounts, cli_topics.topics, cli_store.store):
    main.add_command(_command)


if __name__ == "__main__":
    main()
