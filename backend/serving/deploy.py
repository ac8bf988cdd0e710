"""Deploy `serve_config.yaml` with the machine-specific values taken from Settings.

The file stays a plain Serve config (`serve deploy` / `serve run` accept it); this fills in
http_options, the builder's args and the RECO_* environment of every replica, then submits it
the way `serve run <config>` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from backend.raycluster import job_env
from backend.settings import Settings

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
APP = "reco"


def effective_config(settings: Settings, path: Path = CONFIG) -> dict[str, Any]:
    cfg = yaml.safe_load(path.read_text())
    cfg["http_options"] = (cfg.get("http_options") or {}) | {
        "host": settings.serve.host, "port": settings.serve.port}
    app = next(a for a in cfg["applications"] if a["name"] == APP)
    app["args"] = (app.get("args") or {}) | {
        "split": settings.serve.split, "salt": settings.serve.salt,
        "ingress_replicas": settings.serve.ingress_replicas}
    env = (app.get("runtime_env") or {}).get("env_vars") or {}
    keys = {n: k.model_dump() for n, k in settings.serve.api_keys.items()}  # digests only
    app["runtime_env"] = (app.get("runtime_env") or {}) | {
        "env_vars": env | job_env(settings) | {"RECO_SERVE__API_KEYS": json.dumps(keys)}}
    return cfg


def deploy(settings: Settings, path: Path = CONFIG) -> dict[str, Any]:
    """Submit the effective config (non-blocking); returns it. Ray must be initialised."""
    from ray.serve._private import api as serve_api  # what `serve run <config>` uses
    from ray.serve.schema import ServeDeploySchema

    cfg = effective_config(settings, path)
    schema = ServeDeploySchema.model_validate(cfg)
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    return cfg
