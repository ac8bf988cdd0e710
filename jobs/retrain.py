"""Retrain job: `backend.training.retrain` once, on the Ray cluster it runs on.

Run with `ray job submit -- python -m jobs.retrain` or `reco train`. Runs once per call;
scheduling belongs to the platform. The lake is read with Ray Data when Ray is initialised.
"""

from __future__ import annotations

import argparse
import json
import logging

from backend.core.logs import setup_logging
from backend.core.runtime import init_ray
from backend.core.settings import Settings
from backend.training.retrain import retrain

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--result", metavar="KEY",
                        help="write the outcome per variant to this key of the shared store")
    args = parser.parse_args(argv)
    setup_logging()
    settings = Settings()
    init_ray(settings)
    result = retrain(settings)
    if args.result:
        settings.shared_store().put_model(args.result, result)
    log.info("retrain finished result=%s", json.dumps(result.model_dump(), default=str))


if __name__ == "__main__":
    main()
