"""`reco experiment ...`: experiments through the admin API, with the operator key (the
API records every change in the audit trail under that key's name, and every ingress
replica follows it). Imports stay inside the commands, as in `cli`."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from backend.core.settings import Settings


def _call(method: str, route: str, body: dict[str, Any] | None = None) -> Any:
    """An admin call; a refusal prints its status and detail and exits 1."""
    import httpx

    s = Settings()
    key = os.environ.get("RECO_OPERATOR_KEY")
    assert s.registry.keys_dir is not None  # Settings fills it in
    path = s.registry.keys_dir / "operator.key"
    if not key and path.exists():
        key = path.read_text().strip()
    if not key:
        raise click.ClickException(f"no operator key: set RECO_OPERATOR_KEY or create {path}")
    url = f"http://{s.serve.host}:{s.serve.port}{route}"
    try:
        r = httpx.request(method, url, json=body, headers={"X-API-Key": key}, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"API unreachable at {url}: {exc}") from None
    try:
        answer = r.json()
    except ValueError:
        answer = {"detail": r.text}
    if r.status_code >= 400:
        click.echo(f"refused ({r.status_code}): {answer.get('detail')}", err=True)
        sys.exit(1)
    return answer


def _weights(pairs: tuple[str, ...]) -> dict[str, float]:
    """NAME=WEIGHT pairs (also comma-separated) as a mapping."""
    out: dict[str, float] = {}
    for pair in ",".join(pairs).split(","):
        if not pair:
            continue
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=WEIGHT")
    return out


def _arm(text: str) -> dict[str, Any]:
    """VARIANT or VARIANT:VERSION (pinned)."""
    variant, _, version = text.partition(":")
    return {"variant": variant, "version": version or None}


def _print(view: dict[str, Any]) -> None:
    exp = view["experiment"]
    spec = exp["spec"]
    state = "running" if exp["stop"] is None else f"stopped {exp['stop']}"
    arms = ", ".join(a["variant"] + (f"@{a['version']}" if a["version"] else "")
                     for a in spec["arms"])
    click.echo(f"{spec['id']}: {state}; arms {arms}; control {spec['control']}; "
               f"primary {spec['primary_metric']}; salt {spec['salt']}")
    for e in exp["epochs"]:
        click.echo(f"  epoch {e['number']} from {e['start']}: {json.dumps(e['weights'])}")
    for ev in view.get("events", []):
        click.echo(f"  {ev['ts']} {ev['actor']} {ev['action']} {json.dumps(ev['detail'])}")


@click.group()
def experiment() -> None:
    """Experiments: start, re-weight, add an arm, stop (audited, applied live)."""


@experiment.command("list")
def experiment_list() -> None:
    for exp_id, exp in _call("GET", "/admin/experiments").items():
        state = "running" if exp["stop"] is None else "stopped"
        arms = ",".join(a["variant"] for a in exp["spec"]["arms"])
        click.echo(f"{exp_id} {state} arms={arms} epoch={exp['epochs'][-1]['number']} "
                   f"start={exp['start']}")


@experiment.command("show")
@click.argument("experiment_id")
@click.option("--json", "as_json", is_flag=True, help="the API's answer as it is")
def experiment_show(experiment_id: str, as_json: bool) -> None:
    view = _call("GET", f"/admin/experiments/{experiment_id}")
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        _print(view)


@experiment.command("start")
@click.argument("experiment_id")
@click.option("--arm", "arms", multiple=True, required=True,
              help="VARIANT or VARIANT:VERSION (pinned), twice or more")
@click.option("--control", default=None, help="the control arm (default: the first)")
@click.option("--weights", "weights", multiple=True,
              help="NAME=WEIGHT per arm (default: equal)")
@click.option("--salt", default=None, help="hash salt (default: the experiment id)")
@click.option("--primary", default="watch_through", show_default=True)
def experiment_start(experiment_id: str, arms: tuple[str, ...], control: str | None,
                     weights: tuple[str, ...], salt: str | None, primary: str) -> None:
    specs = [_arm(a) for a in arms]
    given = _weights(weights) or {a["variant"]: 1.0 for a in specs}
    _print(_call("POST", "/admin/experiments", {
        "id": experiment_id, "arms": specs, "control": control or specs[0]["variant"],
        "salt": salt or experiment_id, "weights": given, "primary_metric": primary}))


@experiment.command("set-weights")
@click.argument("experiment_id")
@click.argument("weights", nargs=-1, required=True)
def experiment_set_weights(experiment_id: str, weights: tuple[str, ...]) -> None:
    """WEIGHTS: NAME=WEIGHT for every arm (opens a new allocation epoch)."""
    _print(_call("POST", f"/admin/experiments/{experiment_id}/weights",
                 {"weights": _weights(weights)}))


@experiment.command("add-arm")
@click.argument("experiment_id")
@click.argument("arm")
@click.option("--weight", type=float, required=True)
def experiment_add_arm(experiment_id: str, arm: str, weight: float) -> None:
    """ARM: VARIANT or VARIANT:VERSION, a deployed variant (opens a new epoch)."""
    _print(_call("POST", f"/admin/experiments/{experiment_id}/arms",
                 {"arm": _arm(arm), "weight": weight}))


@experiment.command("stop")
@click.argument("experiment_id")
def experiment_stop(experiment_id: str) -> None:
    _print(_call("POST", f"/admin/experiments/{experiment_id}/stop"))
