"""Start, stop and inspect the platform on one machine (`reco up|down|status`).

Parts: the embedded S3 server (only when the store URI points at it), the embedded broker
(unless a Kafka cluster is configured), a Ray head with token auth
and its dashboard (so `ray job submit` works), the ingest job submitted through the Ray Jobs
SDK, the MovieLens bootstrap when the lake is empty, the first signed models when the registry
has none in production, the Ray Serve app through `serve deploy` (with local simulator and
operator keys in `var/keys/`, 0600), the scheduler job (retrain and analytics), the simulator
job at a gentle rate, and the Streamlit dashboard. `up` waits until every part reports
healthy. Shared state is in the store (`var/` by default); a second `up` finds the parts
running and says so.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from backend.core.layout import Keys
from backend.core.runtime import job_env, ray_env
from backend.core.settings import Settings
from backend.data.kafka import ensure_topics
from backend.data.lake import Lake
from backend.ops.alerting import EmbeddedPrometheus
from backend.ops.broker import EmbeddedBroker
from backend.ops.objectstore import EmbeddedObjectStore
from backend.ops.raycluster import WILDCARD_HOSTS, RayHead
from registry import open_registry

log = logging.getLogger(__name__)
JOBS = {"ingest": "jobs.ingest", "schedule": "jobs.schedule",  # long-running Ray jobs
        "simulate": "jobs.simulate"}
_ACTIVE = {"PENDING", "RUNNING"}


def running_jobs(head: RayHead) -> dict[str, str | None]:
    """Submission id of the running job of each name in JOBS (one Jobs API call)."""
    out: dict[str, str | None] = dict.fromkeys(JOBS)
    for job in head.job_client().list_jobs():
        status = getattr(job.status, "value", str(job.status))
        for name in JOBS:
            if (job.submission_id or "").startswith(f"reco-{name}-") and status in _ACTIVE:
                out[name] = job.submission_id
    return out


def running_job(head: RayHead, name: str) -> str | None:
    return running_jobs(head)[name]


def submit_job(settings: Settings, head: RayHead, name: str, args: str = "",
               env: dict[str, str] | None = None, nice: int = 0) -> tuple[str, bool]:
    """Submit job `name` unless one runs; returns (submission id, newly submitted)."""
    existing = running_job(head, name)
    if existing:
        return existing, False
    prefix = f"nice -n {nice} " if nice else ""
    job = head.job_client().submit_job(
        entrypoint=f"{prefix}{sys.executable} -m {JOBS[name]} {args}".strip(),
        submission_id=f"reco-{name}-{int(time.time())}",
        runtime_env={"env_vars": (env or {}) | job_env(settings)},
    )
    return job, True


def start_simulator(settings: Settings, head: RayHead) -> tuple[str, bool]:
    """The simulator as a Ray job for a week at `sim.background_rps`, releasing an item every
    ten minutes unless RECO_SIM__NEW_ITEM_EVERY says otherwise."""
    return submit_job(settings, head, "simulate",
                      f"--rps {settings.sim.background_rps} --duration {7 * 86400}",
                      {"RECO_SIM__NEW_ITEM_EVERY": "600"}, nice=19)


def start_serving(settings: Settings, head: RayHead, echo: Callable[[str], object]) -> None:
    """`reco serve start` in a child with the head's address and token in its environment
    (Ray reads its auth settings at import, so this process cannot just connect)."""
    import os
    import subprocess


    env = os.environ | ray_env(settings) | {"RAY_ADDRESS": head.address,
                                            "RECO_VAR_DIR": str(settings.var_dir)}
    out = subprocess.run([sys.executable, "-m", "backend.ops.cli", "serve", "start"], env=env,
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"serve start failed: {out.stderr[-2000:]}")
    echo(out.stdout.strip().splitlines()[-1][:300])


def _dashboard_pid(settings: Settings) -> int | None:
    import os

    path = settings.run_dir / "dashboard.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def dashboard_command(port: int, address: str = "127.0.0.1") -> list[str]:
    """`streamlit run` of the dashboard: headless, no usage statistics, the toolbar in
    viewer mode (no Deploy button or developer options)."""
    from pathlib import Path

    app = Path(__file__).resolve().parents[2] / "dashboard" / "streamlit_app.py"
    return [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", address,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]


def dashboard_url(settings: Settings) -> str:
    """Where this machine reaches the dashboard (a wildcard bind answers on loopback)."""
    host = settings.dashboard_host
    host = "127.0.0.1" if host in WILDCARD_HOSTS else f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.dashboard_port}"


def start_dashboard(settings: Settings, echo: Callable[[str], object]) -> None:
    """The Streamlit dashboard on `dashboard_host`, in its own session (stopped by process
    group)."""
    import os
    import subprocess

    if _dashboard_pid(settings):
        echo("dashboard: already running")
        return
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.run_dir / "dashboard.log", "ab") as out:
        proc = subprocess.Popen(
            dashboard_command(settings.dashboard_port, settings.dashboard_host),
            env=os.environ | {"RECO_VAR_DIR": str(settings.var_dir)}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    (settings.run_dir / "dashboard.pid").write_text(str(proc.pid))
    echo(f"dashboard: started {dashboard_url(settings)} (bound to {settings.dashboard_host})")


def stop_dashboard(settings: Settings, echo: Callable[[str], object]) -> None:
    import os
    import signal

    pid = _dashboard_pid(settings)
    (settings.run_dir / "dashboard.pid").unlink(missing_ok=True)
    if pid is None:
        echo("dashboard: was not running")
        return
    os.killpg(pid, signal.SIGTERM)
    echo("dashboard: stopped")


def urls(settings: Settings) -> dict[str, str]:
    api = f"http://{settings.serve.host}:{settings.serve.port}"
    return {"api": api, "dashboard": dashboard_url(settings),
            "ray_dashboard": RayHead(settings).dashboard_url, "metrics": f"{api}/metrics",
            "alerts": settings.prometheus.base_url + "/alerts"}


def embedded_prometheus(settings: Settings) -> EmbeddedPrometheus | None:
    """The Prometheus `up` runs: none with an external one configured, when turned off, or
    without Debian's `prometheus` on this machine."""
    prom = settings.prometheus
    if prom.url or not prom.embedded or EmbeddedPrometheus.binary() is None:
        return None
    return EmbeddedPrometheus(settings)


def start_alerting(settings: Settings, echo: Callable[[str], object]) -> None:
    prom = embedded_prometheus(settings)
    if prom is None:
        why = settings.prometheus.url or "embedded off, or no prometheus on PATH"
        echo(f"alerting: not started here ({why})")
        return
    was = prom.pid()
    pid = prom.start()
    echo(f"alerting: prometheus {'already running' if was else 'started'} pid={pid} {prom.url}")


def _print_urls(settings: Settings, echo: Callable[[str], object]) -> None:
    echo("ready: " + " ".join(f"{k}={v}" for k, v in urls(settings).items())
         + f" keys={settings.registry.keys_dir}/{{sim,operator}}.key")


def health(settings: Settings, sim: bool = True, dashboard: bool = True) -> dict[str, bool]:
    """Each part's health as `up` waits for it."""
    import httpx

    head = RayHead(settings)
    out = {"broker": EmbeddedBroker(settings.kafka, settings.run_dir).pid() is not None
           if settings.kafka.embedded else True,
           "store": EmbeddedObjectStore(settings).pid() is not None
           if settings.store.embedded else True,
           "ray": head.running()}
    jobs = running_jobs(head) if out["ray"] else dict.fromkeys(JOBS)
    for name in ("ingest", "schedule", *(("simulate",) if sim else ())):
        out[f"{name} job"] = bool(jobs[name])
    out["api"] = _api_health(settings) == "ok"
    if (prom := embedded_prometheus(settings)) is not None:
        out["alerting"] = prom.pid() is not None
    if not dashboard:
        return out
    try:
        out["dashboard"] = httpx.get(urls(settings)["dashboard"] + "/_stcore/health",
                                     timeout=5).text == "ok"
    except httpx.HTTPError:
        out["dashboard"] = False
    return out


def up(settings: Settings, echo: Callable[[str], object] = log.info, sim: bool = True,
       wait: float = 180.0, dashboard: bool = True) -> None:
    """`dashboard=False` leaves the dashboard to another machine or container (compose.yaml's
    `dashboard` service)."""
    t0 = time.monotonic()
    if all(health(settings, sim, dashboard).values()):
        echo("platform: already running")
        _print_urls(settings, echo)
        return
    if settings.store.embedded:
        store = EmbeddedObjectStore(settings)
        was = store.pid()
        pid = store.start()
        echo(f"store: {'already running' if was else 'started'} pid={pid} "
             f"{settings.store.endpoint_url}/{settings.store.bucket}")
    if settings.kafka.embedded:
        broker = EmbeddedBroker(settings.kafka, settings.run_dir)
        was = broker.pid()
        pid = broker.start()
        echo(f"broker: {'already running' if was else 'started'} pid={pid} {broker.address}")
    created = ensure_topics(settings.kafka)
    echo(f"topics: created {created}" if created else "topics: present")
    head = RayHead(settings)
    echo(f"ray: {'started' if head.start() else 'already running'} {head.dashboard_url}")
    job, new = submit_job(settings, head, "ingest")
    echo(f"ingest job: {'submitted' if new else 'already running'} {job}")
    lake = Lake.open(settings)
    if lake.count("events.rating") == 0:
        from jobs.bootstrap import publish, wait_landed  # first start only: spare `reco status`

        echo("bootstrap: publishing MovieLens-100K history (first start only)")
        missing = wait_landed(lake, publish(settings), timeout=600)
        echo(f"bootstrap: missing from the lake {missing}")
    for topic, st in lake.stats().items():
        echo(f"lake {topic}: rows={st['rows']} newest={st['newest_ts']}")

    registry = open_registry(settings)
    if not all(registry.aliases(v).production for v in settings.variants):
        echo("models: training the first signed versions")
        from backend.training.retrain import retrain  # first start only: spare `reco status`

        for variant, r in retrain(settings).items():
            echo(f"models: {variant} {r.version} promoted={r.promoted} {r.reasons}")
    for variant in registry.variants():
        echo(f"models: {variant} production={registry.aliases(variant).production}")
    if _api_health(settings) == "down":
        start_serving(settings, head, echo)
    else:
        echo("serving: already running")
    job, new = submit_job(settings, head, "schedule")
    echo(f"scheduler job: {'submitted' if new else 'already running'} {job} (retrain every "
         f"{settings.schedule.retrain_interval} s, analytics every "
         f"{settings.schedule.analyze_interval} s)")
    if sim:
        job, new = start_simulator(settings, head)
        echo(f"simulator job: {'submitted' if new else 'already running'} {job} "
             f"({settings.sim.background_rps} visits/s)")
    start_alerting(settings, echo)
    from backend.ops.cli_accounts import FIRST_ACCOUNT, ensure_first_account

    if (secret := ensure_first_account(settings)) is not None:
        echo(f"console: operator account {FIRST_ACCOUNT} created; its password is in {secret}")
    if dashboard:
        start_dashboard(settings, echo)
    deadline = t0 + wait
    while not all((state := health(settings, sim, dashboard)).values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {wait:.0f} s: "
                               f"{[k for k, ok in state.items() if not ok]}")
        time.sleep(1)
    echo(f"healthy: {', '.join(state)} after {time.monotonic() - t0:.0f} s")
    _print_urls(settings, echo)


def down(settings: Settings, echo: Callable[[str], object] = log.info) -> None:
    stop_dashboard(settings, echo)
    head = RayHead(settings)
    if head.running():
        for name, job in running_jobs(head).items():
            if job:
                head.job_client().stop_job(job)
                echo(f"{name} job: stopped {job}")
    echo("ray: stopped" if head.stop() else "ray: was not running (or not ours)")
    if (prom := embedded_prometheus(settings)) is not None:
        echo("alerting: stopped" if prom.stop() else "alerting: was not running")
    if settings.kafka.embedded:
        stopped = EmbeddedBroker(settings.kafka, settings.run_dir).stop()
        echo("broker: stopped" if stopped else "broker: was not running")
    if settings.store.embedded:
        stopped = EmbeddedObjectStore(settings).stop()
        echo("store: stopped" if stopped else "store: was not running")


def status(settings: Settings) -> dict[str, object]:
    head = RayHead(settings)
    out: dict[str, object] = {
        "broker": EmbeddedBroker(settings.kafka, settings.run_dir).status()
        if settings.kafka.embedded else {"external": settings.kafka.servers},
        "store": EmbeddedObjectStore(settings).status() if settings.store.embedded
        else {"uri": settings.store.uri, "endpoint": settings.store.endpoint},
        "ray": {"running": head.running(), "dashboard": head.dashboard_url},
        "jobs": running_jobs(head) if head.running() else {},
        "api": _api_health(settings),
        "dashboard": {"running": _dashboard_pid(settings) is not None,
                      "url": dashboard_url(settings)},
        "schedule": _schedule(settings),
        "alerting": (prom.status() if (prom := embedded_prometheus(settings)) is not None
                     else {"external": settings.prometheus.url}),
        "lake": {t: st["rows"] for t, st in Lake.open(settings).stats().items()},
        "models": _production_models(settings),
    }
    return out


def _api_health(settings: Settings) -> object:
    import httpx

    try:
        return httpx.get(f"http://{settings.serve.host}:{settings.serve.port}/health",
                         timeout=5).json().get("status")
    except (httpx.HTTPError, ValueError):
        return "down"


def _production_models(settings: Settings) -> dict[str, str | None]:
    registry = open_registry(settings)
    return {v: registry.aliases(v).production for v in registry.variants()}


def _schedule(settings: Settings) -> dict[str, object]:
    """What the scheduler runs now, when it runs next, and its latest retrain."""
    store = settings.shared_store()
    state = store.get_json(Keys.schedule_state) or {}
    retrains = [r for r in store.log(Keys.schedule_runs).read() if r["kind"] == "retrain"]
    return {"running": state.get("running", {}), "next_due": {
                k: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
                for k, v in state.get("next_due", {}).items()},
            "retrains": len(retrains), "last_retrain": retrains[-1] if retrains else None}
