"""Optional TLS front for the embedded broker: stunnel (Debian) terminates TLS on
`kafka.embedded_tls_port` and forwards to tansu's loopback listener; tansu advertises the TLS
port, so every client connection after the bootstrap goes through TLS too.

Certificates are generated once under `var/tls/`: a private CA (`ca.pem`, which clients
trust through `kafka.ssl_cafile`) and a server certificate for 127.0.0.1/localhost; private keys
are written with mode 0600. tansu's own TLS is unusable in this build, hence stunnel.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from backend.core.errors import ConfigError
from backend.ops.procs import live_pid, port_open, stop_pid

log = logging.getLogger(__name__)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def ensure_certs(tls_dir: Path, days: int = 825) -> dict[str, Path]:
    """CA and loopback server certificate under `tls_dir` (made once, reused after)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    paths = {"ca": tls_dir / "ca.pem", "cert": tls_dir / "server.pem",
             "key": tls_dir / "server.key"}
    if all(p.exists() for p in paths.values()):
        return paths
    tls_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM

    def key_pem(key) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reco local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(tls_dir / "ca.key", key_pem(ca_key))
    _write_private(paths["key"], key_pem(key))
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    log.info("tls certificates created dir=%s", tls_dir)
    return paths


def stunnel_binary() -> str:
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    if not path:
        raise ConfigError("stunnel is not installed (Debian: apt-get install stunnel4)")
    return path


class TlsFront:
    """One stunnel process: TLS on `accept`, plaintext to `connect`, tracked by pid file."""

    def __init__(self, tls_dir: Path, run_dir: Path, accept: str, connect: str) -> None:
        self.tls_dir, self.run_dir = tls_dir, run_dir
        self.accept, self.connect = accept, connect
        self.pid_file = run_dir / "stunnel.pid"

    def pid(self) -> int | None:
        return live_pid(self.pid_file, "stunnel")

    def start(self, timeout: float = 10.0) -> int:
        if (pid := self.pid()) is not None:
            return pid
        certs = ensure_certs(self.tls_dir)
        conf = self.tls_dir / "stunnel.conf"
        conf.write_text("\n".join([
            "foreground = yes", f"output = {self.run_dir / 'stunnel.log'}", "",
            "[kafka]", f"accept = {self.accept}", f"connect = {self.connect}",
            f"cert = {certs['cert']}", f"key = {certs['key']}", "sslVersionMin = TLSv1.2", ""]))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([stunnel_binary(), str(conf)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        host, port = self.accept.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while not port_open(host, int(port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ConfigError(f"stunnel did not listen on {self.accept}; see "
                                  f"{self.run_dir / 'stunnel.log'}")
            time.sleep(0.1)
        log.info("tls front started pid=%s accept=%s connect=%s", proc.pid, self.accept,
                 self.connect)
        return proc.pid

    def stop(self) -> bool:
        pid = self.pid()
        self.pid_file.unlink(missing_ok=True)
        return pid is not None and stop_pid(pid, "stunnel")
