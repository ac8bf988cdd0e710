"""`reco`: the platform's one command line. Settings are built here, per invocation."""

from __future__ import annotations

import json
import sys

import click

from backend.logs import setup_logging
from backend.settings import Settings


def _settings() -> Settings:
    return Settings()


@click.group()
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (env RECO_LOG_LEVEL)")
def main(log_level: str | None) -> None:
    """Movie recommender platform."""
    setup_logging(log_level)


# -- broker -------------------------------------------------------------------------------


@main.group()
def broker() -> None:
    """The embedded Kafka-protocol broker (used when no bootstrap server is configured)."""


def _embedded():
    from backend.broker import EmbeddedBroker

    s = _settings()
    if not s.kafka.embedded:
        raise click.ClickException(f"a Kafka cluster is configured ({s.kafka.servers}); "
                                   "the embedded broker is not used")
    return s, EmbeddedBroker(s.kafka, s.run_dir)


@broker.command("start")
def broker_start() -> None:
    from backend.kafka import ensure_topics

    s, b = _embedded()
    was = b.pid()
    pid = b.start()
    created = ensure_topics(s.kafka)
    click.echo(f"broker {'already running' if was else 'started'} pid={pid} address={b.address}"
               f" topics_created={created}")


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


@main.command()
def topics() -> None:
    """Create the event topics if missing (idempotent)."""
    from backend.kafka import ensure_topics

    click.echo(f"created: {ensure_topics(_settings().kafka)}")


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
    """The Parquet event lake."""


@lake.command("stats")
@click.option("--json", "as_json", is_flag=True)
def lake_stats(as_json: bool) -> None:
    from backend.lake import Lake

    stats = Lake(_settings().lake_root).stats()
    if as_json:
        click.echo(json.dumps(stats, default=str))
        return
    click.echo(f"{'topic':<16}{'rows':>10}{'files':>8}  newest event")
    for topic, st in stats.items():
        click.echo(f"{topic:<16}{st['rows']:>10}{st['files']:>8}  {st['newest_ts'] or '-'}")


@main.command()
@click.option("--once", is_flag=True, help="stop once the topics are drained")
@click.option("--actors", type=int, default=None, help="default: one per partition")
def ingest(once: bool, actors: int | None) -> None:
    """Run the ingest job (Kafka -> validated, deduplicated lake) on Ray."""
    from backend.raycluster import init_ray
    from jobs.ingest import run

    s = _settings()
    init_ray(s)
    stats = run(s, once=once, actors=actors)
    click.echo(json.dumps(stats))


@main.command()
@click.option("--wait", type=float, default=600.0, help="seconds to wait for the lake (0: no)")
def bootstrap(wait: float) -> None:
    """Publish MovieLens-100K history to Kafka; wait until the ingest job has landed it."""
    from backend.lake import Lake
    from jobs.bootstrap import publish, wait_landed

    s = _settings()
    ids = publish(s)
    click.echo(f"published: {', '.join(f'{t}={len(v)}' for t, v in ids.items())}")
    if wait:
        missing = wait_landed(Lake(s.lake_root), ids, wait)
        click.echo(f"missing from the lake: {missing}")
        if any(missing.values()):
            raise click.ClickException("not all events landed; is the ingest job running?")


@main.command()
@click.argument("source", type=click.File("r"), default="-")
def produce(source) -> None:
    """Produce course-format log lines (rate and watch) from a file or stdin."""
    from backend.events import DlqEvent, LineFormatError, parse_line
    from backend.kafka import EventProducer

    s = _settings()
    producer = EventProducer(s.kafka, s.spool_dir / "cli")
    sent = bad = 0
    try:
        for lineno, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                topic, record = parse_line(line)
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
    click.echo(f"produced={sent} unparseable={bad}")


# -- the platform -------------------------------------------------------------------------


@main.command()
def up() -> None:
    """Start the platform with embedded defaults (idempotent)."""
    from backend import platform

    platform.up(_settings(), echo=click.echo)


@main.command()
def down() -> None:
    """Stop what `up` started; `var/` stays."""
    from backend import platform

    platform.down(_settings(), echo=click.echo)


@main.command()
def status() -> None:
    """Each component's state."""
    from backend import platform

    click.echo(json.dumps(platform.status(_settings()), indent=2, default=str))


if __name__ == "__main__":
    main()
