"""Processes and ports on this host: liveness, command lines from /proc, stopping what we
started by pid (never by name)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line with spaces for NULs) of every process we may read."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (cmd := cmdline(int(entry))):
            yield int(entry), cmd


def live_pid(pid_file: Path, expect: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line names `expect`
    (a stale file, or a pid reused by another program, is None)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) and expect in cmdline(pid) else None


def stop_pid(pid: int, expect: str, timeout: float = 10.0) -> bool:
    """SIGTERM then SIGKILL a process we started, if its command line still names `expect`."""
    if not pid_alive(pid) or expect not in cmdline(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True
