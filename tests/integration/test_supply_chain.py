"""Dependency pinning: the install refuses a package whose hash is not the lock's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _entry(name: str) -> str:
    """One package's pinned entry (name==version and its --hash lines) from the lock."""
    lock = (ROOT / "requirements.lock").read_text()
    match = re.search(rf"^{name}==\S+ \\\n(?:    --hash=sha256:[0-9a-f]{{64}}(?: \\)?\n)+",
                      lock, re.M)
    assert match, f"{name} is not pinned with hashes in requirements.lock"
    return match.group(0)


def _install(lock: Path, target: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "install", "--require-hashes",
                           "--no-deps", "--no-cache-dir", "--target", str(target), "-r",
                           str(lock)], capture_output=True, text=True, timeout=300)


def test_install_fails_when_a_hash_does_not_match(tmp_path):
    genuine = tmp_path / "genuine.lock"
    genuine.write_text(_entry("six"))
    ok = _install(genuine, tmp_path / "a")
    assert ok.returncode == 0, ok.stderr[-2000:]  # the real artefact matches its pin

    tampered = tmp_path / "tampered.lock"
    tampered.write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, _entry("six")))
    bad = _install(tampered, tmp_path / "b")
    assert bad.returncode != 0
    assert "DO NOT MATCH THE HASHES" in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "b" / "six.py").exists()

    unpinned = tmp_path / "unpinned.lock"
    unpinned.write_text("six==1.17.0\n")
    refused = _install(unpinned, tmp_path / "c")
    assert refused.returncode != 0 and "hash" in refused.stderr.lower()
