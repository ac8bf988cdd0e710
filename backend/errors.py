"""One error base class that carries its HTTP status; the ingress maps it to JSON `detail`."""

from __future__ import annotations


class RecoError(Exception):
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(RecoError):
    status_code = 422


class ConfigError(RecoError):
    """Settings or environment do not allow the operation (wrong port, missing binary)."""

    status_code = 503


class Unavailable(RecoError):
    status_code = 503
