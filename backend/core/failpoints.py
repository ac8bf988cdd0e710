"""Failpoints: crash a process at a named point, on purpose, to prove recovery in tests.

`RECO_FAILPOINTS="ingest.after_write=2"` makes the second pass through
`failpoint("ingest.after_write")` kill the process (`os._exit`, like kill -9: no cleanup, no
commit). It fires once per marker directory `RECO_FAILPOINT_DIR`, so the restarted process
runs on. Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
_hits: dict[str, int] = {}


def _armed() -> dict[str, int]:
    spec = os.environ.get("RECO_FAILPOINTS", "")
    out = {}
    for part in filter(None, spec.split(",")):
        name, _, n = part.partition("=")
        out[name.strip()] = int(n or 1)
    return out


def failpoint(name: str) -> None:
    armed = _armed()
    if name not in armed:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < armed[name]:
        return
    marker = Path(os.environ.get("RECO_FAILPOINT_DIR", "var/failpoints")) / f"{name}.fired"
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # only one process fires
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    log.error("failpoint fired name=%s pid=%s", name, os.getpid())
    os._exit(137)
