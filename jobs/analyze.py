"""Analyze job: one analytics cycle (`backend.analytics.cycle`) by hand or as a Ray job.

The scheduler (`jobs.schedule`) runs the same cycle every `schedule.analyze_interval` in its
own process; `reco analyze` or `ray job submit -- python -m jobs.analyze` runs it here
(without --once: in a loop).
"""

from __future__ import annotations

import argparse
import logging
import time

from backend.analytics.cycle import cycle
from backend.core.logs import setup_logging
from backend.core.settings import Settings

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="one cycle, then exit")
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings()
    while True:
        t0 = time.monotonic()
        try:
            cycle(settings)
        except Exception:  # a bad cycle must not end the loop; the next one retries
            if args.once:
                raise
            log.exception("analytics cycle failed")
        if args.once:
            return
        time.sleep(max(1.0, settings.schedule.analyze_interval - (time.monotonic() - t0)))


if __name__ == "__main__":
    main()
