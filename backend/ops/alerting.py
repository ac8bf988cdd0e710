"""The alerting side: Debian's `prometheus` scraping the API's /metrics and the Ray head's
metrics, evaluating the shipped rules (deploy/prometheus/rules.yml); the dashboard reads the
alert states back from its HTTP API (`dashboard.data.alerts`).

Started like the broker: loopback only, one process tracked by a pid file under `var/run/`,
its data under `var/prometheus/`. The shipped deploy/prometheus/prometheus.yml is this
module's config for the default settings (a test keeps them equal); the running server gets
one rendered from the actual settings, with the rules' absolute path.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from backend.core.errors import ConfigError
from backend.core.settings import Settings
from backend.ops.procs import live_pid, port_open, stop_pid

log = logging.getLogger(__name__)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "rules.yml"


def scrape_config(settings: Settings, rules: str) -> dict[str, Any]:
    """The Prometheus configuration for `settings`: the API and the Ray head's metrics."""
    prom = settings.prometheus
    return {
        "global": {"scrape_interval": f"{prom.scrape_interval:g}s",
                   "evaluation_interval": f"{prom.evaluation_interval:g}s"},
        "rule_files": [rules],
        "scrape_configs": [
            {"job_name": "reco-api", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"{settings.serve.host}:{settings.serve.port}"]}]},
            {"job_name": "ray", "metrics_path": "/metrics",
             "static_configs": [{"targets": [f"127.0.0.1:{settings.ray.metrics_export_port}"]}]},
        ]}


def render(settings: Settings, rules: str = "rules.yml") -> str:
    head = ("# Scrape config of the movie recommender's Prometheus (`reco up` renders this for "
            "its settings;\n# this file is the default settings' rendering, kept equal by "
            "tests/unit/test_alert_rules.py).\n")
    return head + yaml.safe_dump(scrape_config(settings, rules), sort_keys=False)


class EmbeddedPrometheus:
    """Debian's `prometheus` on 127.0.0.1:`prometheus.port`, for this state folder."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.prometheus.port
        self.root = settings.layout.root / "prometheus"
        run = settings.layout.run
        self.pid_file, self.log_file = run / "prometheus.pid", run / "prometheus.log"
        self.config = self.root / "prometheus.yml"

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def pid(self) -> int | None:
        return live_pid(self.pid_file, "prometheus")

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid, "url": self.url,
                "reachable": port_open("127.0.0.1", self.port)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> int:
        """Render the config and start the server unless ours runs already; its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        binary = self.binary()
        if binary is None:
            raise ConfigError("no `prometheus` on PATH (Debian: apt-get install prometheus)")
        if port_open("127.0.0.1", self.port):
            raise ConfigError(f"port 127.0.0.1:{self.port} is taken by another process")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render(self.settings, str(RULES)))
        cmd = [binary, f"--config.file={self.config}",
               f"--storage.tsdb.path={self.root / 'data'}",
               f"--web.listen-address=127.0.0.1:{self.port}",
               "--storage.tsdb.retention.time=7d"]
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"prometheus exited with {proc.returncode}; "
                                  f"see {self.log_file}")
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    log.info("prometheus started pid=%s url=%s", proc.pid, self.url)
                    return proc.pid
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise ConfigError(f"prometheus not ready on {self.url} within {timeout}s")

    def stop(self) -> bool:
        pid = self.pid()
        stopped = pid is not None and stop_pid(pid, "prometheus")
        self.pid_file.unlink(missing_ok=True)
        if stopped:
            log.info("prometheus stopped pid=%s", pid)
        return stopped
