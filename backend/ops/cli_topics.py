"""`reco topics create|describe|tail`: create the event topics and look into any topic with
kafka-python, so the same commands work on the embedded broker and on a real cluster (what
other tools make of the embedded broker: the README)."""

from __future__ import annotations

import click

from backend.ops.cli_models import _settings


@click.group()
def topics() -> None:
    """The event topics: create them, see what they hold, read their records."""


@topics.command("create")
def topics_create() -> None:
    """Create the event topics if missing (idempotent)."""
    from backend.data.kafka import ensure_topics

    click.echo(f"created: {ensure_topics(_settings().kafka)}")


@topics.command("describe")
@click.argument("names", nargs=-1)
@click.option("--count", is_flag=True, help="count each partition's records (reads them all)")
def topics_describe(names: tuple[str, ...], count: bool) -> None:
    """Every topic (or NAMES): partitions, leader, replicas, the ingest group's committed
    offset, and with --count the records."""
    from backend.data.topics import describe

    try:
        infos = describe(_settings().kafka, list(names) or None, count)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    for t in infos:
        total = sum(p.records or 0 for p in t.partitions)
        click.echo(f"{t.topic} partitions={len(t.partitions)}"
                   + (f" records={total}" if count else ""))
        for p in t.partitions:
            click.echo(f"  {p.partition} leader={p.leader} replicas={p.replicas} "
                       f"in_sync={p.in_sync} committed="
                       f"{'-' if p.committed is None else p.committed}"
                       + (f" records={p.records}" if count else ""))


@topics.command("tail")
@click.argument("topic")
@click.option("--from-beginning", is_flag=True, help="from the first record, not from now")
@click.option("-n", "limit", type=click.IntRange(min=1), default=None,
              help="stop after N records")
@click.option("--idle", type=click.FloatRange(min=0), default=None,
              help="stop after this many seconds without a record")
def topics_tail(topic: str, from_beginning: bool, limit: int | None, idle: float | None) -> None:
    """TOPIC's records, one a line: partition:offset time key=... value. From now on unless
    --from-beginning; until N records, IDLE seconds without one, or Ctrl-C. (-n counts from
    where reading starts: the last N would need the end offsets, which the embedded broker
    reports wrong.)"""
    from backend.data.topics import tail

    try:
        for record in tail(_settings().kafka, topic, from_beginning, limit, idle):
            click.echo(record.line())
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass
