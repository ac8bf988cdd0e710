"""Ray runtime helpers every layer that runs on Ray shares: the auth environment, the
settings forwarded to jobs and replicas, and connecting to the cluster."""

from __future__ import annotations

import os
import secrets
from typing import Any

from backend.core.settings import Settings


def ray_env(settings: Settings) -> dict[str, str]:
    """Environment for Ray processes and clients: token auth, the token in a 0600 file."""
    token = settings.run_dir / "ray_auth_token"
    if not token.exists():
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
    os.chmod(token, 0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


SECRET_MARKERS = ("API_KEY", "ACCESS_KEY", "PASSWORD", "SECRET", "TOKEN")


def job_env(settings: Settings) -> dict[str, str]:
    """RECO_* settings forwarded to Ray jobs and Serve replicas, with the state folder made
    absolute. Secrets are not forwarded: Ray logs every runtime_env in plain text
    (runtime_env_agent.log). Jobs get them from the node's environment, which Ray workers
    inherit (set them where `ray start` runs), or from their files under var/keys."""
    env = {k: v for k, v in os.environ.items()
           if k.startswith("RECO_") and not any(m in k for m in SECRET_MARKERS)}
    env["RECO_VAR_DIR"] = str(settings.var_dir)
    return env


def init_ray(settings: Settings) -> Any:  # ray's context: its dashboard_url feeds `serve deploy`
    """Connect to `ray.address` (or RAY_ADDRESS), else start a private local instance.

    Ray reads its auth settings from the environment at import: a client of the head that
    `reco up` started needs `ray_env()` in its environment before it starts (jobs get it from
    the cluster), not set from here.
    """
    import ray

    return ray.init(address=settings.ray.address, log_to_driver=True)
