"""Simulator job: seeded users visit the HTTP API, watch and rate what they were shown.

Run with `reco simulate --rps R --duration S --seed N` (or `ray job submit -- python -m
jobs.simulate`). Bounded in rate and duration; refuses any non-loopback URL. Writes the bots'
ground truth to `sim/ground_truth.json` and a run summary to `sim/last_run.json` in the shared
store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from ipaddress import ip_address
from urllib.parse import urlparse

import httpx

from backend.core.errors import BadRequest
from backend.core.layout import Keys
from backend.core.logs import setup_logging
from backend.core.settings import Settings
from backend.data import catalog
from backend.data.movielens import load as load_movielens
from backend.ml.simulation import SimulatorLogic

log = logging.getLogger(__name__)


def loopback_url(url: str) -> str:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise BadRequest(f"the simulator only talks to loopback, not {host!r}")
    return url.rstrip("/")


def api_key(settings: Settings) -> str | None:
    """The simulator's client key: settings/env first, else `var/keys/sim.key` (0600)."""
    if settings.sim.api_key is not None:
        return settings.sim.api_key.get_secret_value()
    assert settings.registry.keys_dir is not None  # Settings fills it in
    path = settings.registry.keys_dir / "sim.key"
    return path.read_text().strip() if path.exists() else None


class Simulation:
    def __init__(self, settings: Settings, logic: SimulatorLogic, url: str,
                 key: str | None) -> None:
        self.settings = settings
        self.logic = logic
        self.url = loopback_url(url)
        self.headers = {"X-API-Key": key} if key else {}
        self.status: Counter[str] = Counter()
        self.accepted: list[str] = []  # event ids of the writes the API accepted (202)
        self.visits = 0
        self.errors = 0

    async def _call(self, client: httpx.AsyncClient, method: str, path: str,
                    **kw) -> httpx.Response | None:
        try:
            r = await client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self.errors += 1
            log.warning("request failed route=%s error=%s", path, exc)
            return None
        self.status[f"{path} {r.status_code}"] += 1
        if r.status_code == 202:
            self.accepted.append(r.json()["event_id"])
        return r

    async def visit(self, client: httpx.AsyncClient, user: int) -> None:
        self.visits += 1
        r = await self._call(client, "GET", "/recommend",
                             params={"user_id": user, "k": self.settings.sim.k})
        now = datetime.now(UTC)
        if self.logic.is_bot(user):
            for body in self.logic.bot_ratings(user, now):
                await self._call(client, "POST", "/rate", json=body)
            return
        if r is None or r.status_code != 200:
            return
        items = [int(i["item_id"]) for i in r.json()["items"]]
        reaction = self.logic.react(user, items, now)
        for body in reaction.watches:
            await self._call(client, "POST", "/watch", json=body)
        for body in reaction.ratings:
            await self._call(client, "POST", "/rate", json=body)

    async def run(self, rps: float, duration: float) -> dict:
        cfg = self.settings.sim
        limits = httpx.Limits(max_connections=cfg.concurrency)
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=15,
                                     limits=limits) as client:
            loop = asyncio.get_running_loop()
            start = loop.time()
            next_release = start + cfg.new_item_every
            slots = asyncio.Semaphore(cfg.concurrency)
            tasks: set[asyncio.Task] = set()
            n = 0
            while loop.time() - start < duration:
                due = start + n / rps
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if loop.time() >= next_release:
                    catalog.release(self.settings, self.logic.release_item(datetime.now(UTC)))
                    next_release += cfg.new_item_every
                await slots.acquire()
                task = asyncio.create_task(self.visit(client, self.logic.next_user()))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: slots.release())
                n += 1
            await asyncio.gather(*tasks)
        return {"visits": self.visits, "seconds": round(loop.time() - start, 2),
                "errors": self.errors, "accepted_writes": len(self.accepted),
                "status": dict(sorted(self.status.items())),
                "released": len(self.logic.released)}


def simulate(settings: Settings, rps: float | None = None, duration: float | None = None,
             seed: int | None = None, url: str | None = None) -> dict:
    cfg = settings.sim.model_copy(update={k: v for k, v in
                                          {"rps": rps, "duration": duration, "seed": seed}.items()
                                          if v is not None})
    settings = settings.model_copy(update={"sim": cfg})
    base = loopback_url(url or cfg.url or f"http://127.0.0.1:{settings.serve.port}")
    ml = load_movielens(settings.data_cache)
    logic = SimulatorLogic(ml.ratings, catalog.load_catalog(settings, ml.items), ml.users, cfg)
    store = settings.shared_store()
    sim = Simulation(settings, logic, base, api_key(settings))
    store.put_json(Keys.ground_truth, logic.ground_truth())  # before traffic: bots known
    log.info("simulation started url=%s rps=%s duration=%s seed=%s bots=%d", sim.url, cfg.rps,
             cfg.duration, cfg.seed, len(logic.bots))
    t0 = time.time()
    summary = asyncio.run(sim.run(cfg.rps, cfg.duration))
    summary |= {"seed": cfg.seed, "rps": cfg.rps, "started": t0}
    store.put_json(Keys.ground_truth, logic.ground_truth())  # with the released items
    store.put_json(Keys.last_sim_run, summary)
    log.info("simulation finished summary=%s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rps", type=float)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--url")
    args = parser.parse_args(argv)
    setup_logging()
    simulate(Settings(), args.rps, args.duration, args.seed, args.url)


if __name__ == "__main__":
    main()
