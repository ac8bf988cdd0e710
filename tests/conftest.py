"""Shared fixtures: settings that point every path at a temporary folder."""

from __future__ import annotations

import socket

import pytest

from backend.core.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    for key in list(__import__("os").environ):
        if key.startswith("RECO_"):
            monkeypatch.delenv(key)
    return Settings(var_dir=tmp_path / "var")
