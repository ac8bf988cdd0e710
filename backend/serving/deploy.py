"""Deploy `serve_config.yaml` with the machine-specific values taken from Settings.

The file stays a plain Serve config (`serve deploy` / `serve run` accept it); this fills in
http_options, the builder's args and the RECO_* environment of every replica, writes the result
to `var/run/serve_config.deployed.yaml` (0600: it names the key digests) and hands it to
`serve deploy`, so the config always goes through Serve's own CLI and REST API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from backend.core.errors import ConfigError
from backend.core.runtime import job_env
from backend.core.settings import Role, Settings

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
APP = "reco"


def effective_config(settings: Settings, path: Path = CONFIG) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(path.read_text())
    cfg["http_options"] = (cfg.get("http_options") or {}) | {
        "host": settings.serve.host, "port": settings.serve.port}
    app = next(a for a in cfg["applications"] if a["name"] == APP)
    app["args"] = (app.get("args") or {}) | {
        "split": settings.serve.split, "salt": settings.serve.salt,
        "ingress_replicas": settings.serve.ingress_replicas}
    app["deployments"] = placed(
        variant_deployments(app.get("deployments") or [], list(settings.variants)),
        settings.serve.placement)
    env = (app.get("runtime_env") or {}).get("env_vars") or {}
    keys = {n: k.model_dump() for n, k in settings.serve.api_keys.items()}  # digests only
    app["runtime_env"] = (app.get("runtime_env") or {}) | {
        "env_vars": env | job_env(settings) | {"RECO_SERVE__API_KEYS": json.dumps(keys)}}
    return cfg


def variant_deployments(deployments: list[dict[str, Any]], variants: list[str]
                        ) -> list[dict[str, Any]]:
    """The file's deployment options with one `Variant<name>` entry per settings variant:
    the file's own where it has one, else a copy of its first variant's (a variant the
    settings do not name is dropped: Serve refuses options for a deployment it lacks)."""
    others = [d for d in deployments if not d["name"].startswith("Variant")]
    own = {d["name"]: d for d in deployments if d["name"].startswith("Variant")}
    template = next(iter(own.values()), {"name": "Variant"})
    return others + [own.get(f"Variant{v}", template | {"name": f"Variant{v}"})
                     for v in variants]


def placed(deployments: list[dict[str, Any]], placement: Mapping[Role, dict[str, float]]
           ) -> list[dict[str, Any]]:
    """Each deployment with the custom resources `serve.placement` gives its role (`Variant`
    for every `Variant<name>`), beside the CPUs its class asks for (a config's
    `ray_actor_options` replaces the class's whole)."""
    if not placement:
        return deployments
    from backend.serving import deployments as classes  # Ray Serve: only when placing

    own = {"Ingress": classes.Ingress, "Variant": classes.VariantDeployment,
           "ServingState": classes.ServingState, "RecoLog": classes.RecoLogDeployment}
    out = []
    for d in deployments:
        role: Role = "Variant" if d["name"].startswith("Variant") else d["name"]
        if role in placement:
            base = dict(getattr(own[role], "ray_actor_options", None) or {})
            d = d | {"ray_actor_options": base | d.get("ray_actor_options", {})
                     | {"resources": dict(placement[role])}}
        out.append(d)
    return out


def deploy(settings: Settings, dashboard_url: str, path: Path = CONFIG) -> dict[str, Any]:
    """`serve deploy` the effective config to the cluster whose Ray dashboard (Jobs and Serve
    REST API) is at `dashboard_url`; returns the config. Non-blocking, like `serve deploy`."""
    cfg = effective_config(settings, path)
    out_path = settings.run_dir / "serve_config.deployed.yaml"
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
    serve_cli = Path(sys.executable).with_name("serve")
    done = subprocess.run([str(serve_cli), "deploy", str(out_path), "--address", url],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ConfigError(f"serve deploy refused {out_path}: {done.stderr[-2000:]}")
    return cfg
