"""One error base class that carries its HTTP status; the ingress maps it to JSON `detail`."""

from __future__ import annotations


class RecoError(Exception):
    """A refusal with a reason: `status_code` (the class's, or one given) and `detail`."""

    status_code = 500

    def __init__(self, detail: str, status_code: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.headers = headers or {}


class BadRequest(RecoError):
    status_code = 422


class ConfigError(RecoError):
    """Settings or environment do not allow the operation (wrong port, missing binary)."""

    status_code = 503
