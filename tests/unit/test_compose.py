"""compose.yaml, which no Docker engine here can run, is checked against the Compose
specification's JSON schema (vendored in the hash-pinned check-jsonschema wheel) and against
what the platform and the three-node test run: the same Ray flags and custom resources, the
same SeaweedFS arguments, settings that exist, the default ports, secrets only as files."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
IMAGE_VAR = Path("/var/lib/reco")


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def _schema() -> dict[str, Any]:
    """The Compose specification's schema as check-jsonschema vendors it, checked against
    the digest the wheel records for it."""
    vendor = files("check_jsonschema.builtin_schemas.vendor")
    raw = vendor.joinpath("compose-spec.json").read_bytes()
    recorded = vendor.joinpath("sha256").joinpath("compose-spec.sha256").read_text().strip()
    assert hashlib.sha256(raw).hexdigest() == recorded
    schema: dict[str, Any] = json.loads(raw)
    return schema


def _validator() -> Any:
    from jsonschema.validators import validator_for

    schema = _schema()
    cls = validator_for(schema)  # the draft the schema declares ($schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _image_env() -> dict[str, str]:
    """The Dockerfile's ENV: what every container starts with before compose's environment."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env |= dict(item.split("=", 1) for item in shlex.split(line[4:]))
    return env


def _env(service: str) -> dict[str, str]:
    """A service's environment as its processes see it: the image's, then compose's."""
    return _image_env() | {k: str(v) for k, v in
                           _compose()["services"][service].get("environment", {}).items()}


def _flags(argv: list[str]) -> dict[str, str]:
    """`--name=value` (or a bare `--name`: "") of a command line, by name."""
    out = {}
    for arg in argv:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def _script_line(service: str, prefix: str) -> list[str]:
    """The line of a service's `sh -c` script that starts with `prefix`, split as sh would
    (compose turns each `$$` into `$` first)."""
    command = _compose()["services"][service]["command"]
    assert command[:2] == ["sh", "-c"]
    lines = [ln for ln in command[2].replace("$$", "$").splitlines()
             if ln.strip().startswith(prefix)]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def _mounted(service: str) -> set[str]:
    """Where a service's secrets appear in its containers."""
    out = set()
    for entry in _compose()["services"][service].get("secrets", []):
        name = entry if isinstance(entry, str) else entry["source"]
        target = name if isinstance(entry, str) else entry.get("target", name)
        out.add(target if target.startswith("/") else f"/run/secrets/{target}")
    return out


def test_compose_yaml_validates_against_the_compose_specification():
    _validator().validate(_compose())
    assert set(_compose()["services"]) == {"seaweedfs", "broker", "head", "worker", "dashboard"}


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d["services"]["head"].__setitem__("commmand", ["reco", "up"]), "commmand"),
    (lambda d: d["services"]["worker"]["depends_on"]["head"].__setitem__(
        "condition", "service_ready"), "service_ready"),
    (lambda d: d["secrets"]["store_credentials"].__setitem__("value", "inline"), "value"),
])
def test_the_schema_refuses_a_broken_compose_file(mutate, where):
    import jsonschema

    broken = copy.deepcopy(_compose())
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError) as refused:
        _validator().validate(broken)
    assert where in str(refused.value)


def test_every_dollar_is_escaped_from_compose_interpolation():
    """Compose substitutes `$NAME` from the host's environment; the scripts mean the
    container's, written `$$NAME`."""
    assert not re.search(r"(?<!\$)\$(?!\$)", COMPOSE.read_text().replace("$$", ""))


def test_the_head_runs_ray_as_rayhead_does_and_then_the_platform(tmp_path):
    from backend.core.settings import Settings
    from backend.ops.raycluster import RayHead
    from tests.integration.test_cluster import HEAD

    ours = _flags(RayHead(Settings(var_dir=tmp_path)).command())
    theirs = _flags(_script_line("head", "ray start"))
    # on one machine RayHead pins loopback and a temp dir per port; a container's head is
    # reached by name from the workers, so Ray picks the container's own address
    assert set(ours) - set(theirs) == {"--node-ip-address", "--temp-dir"}
    for flag in set(ours) - {"--node-ip-address", "--temp-dir", "--num-cpus"}:
        assert theirs[flag] == ours[flag], flag
    assert int(theirs["--num-cpus"]) >= 4  # RayHead's floor: the platform's actors need ~2
    assert json.loads(theirs["--resources"]) == {HEAD: 100}  # as the three-node test's head
    assert theirs["--dashboard-host"] == "127.0.0.1"  # the Jobs API stays inside the head
    up = _script_line("head", "reco up")
    assert "--no-dashboard" in up and "--no-sim" in up  # the dashboard is a service of its own


def test_the_nodes_environment_is_what_rayhead_gives_its_processes(tmp_path):
    """Serve's settings as RayHead.start sets them (Serve's own proxy: HAProxy needs the
    wrapper RayHead writes), and Ray's workers at niceness 0 on every node (_node_env)."""
    from backend.core.settings import Settings
    from backend.ops.raycluster import serve_env

    head = _env("head")
    settings = Settings(var_dir=tmp_path, serve={"haproxy": head["RECO_SERVE__HAPROXY"]})
    assert not settings.serve.haproxy
    assert serve_env(settings).items() <= head.items()
    for service in ("head", "worker"):
        assert _env(service)["RAY_worker_niceness"] == "0"
        assert _env(service)["RAY_AUTH_MODE"] == "token"  # the image's


def test_the_workers_join_the_head_with_the_three_node_tests_resources(tmp_path):
    from backend.core.settings import RaySettings, Settings
    from backend.ops.raycluster import RayWorker
    from tests.integration.test_cluster import WORKER

    # the three-node test's workers: RayWorker(settings, name, ports, num_cpus=2,
    # resources={WORKER: 100}) with its default object store
    ours = _flags(RayWorker(Settings(var_dir=tmp_path), "w1", list(range(6)), num_cpus=2,
                            resources={WORKER: 100}).command())
    worker = _compose()["services"]["worker"]
    theirs = _flags(worker["command"])
    for flag in ("--num-cpus", "--object-store-memory", "--resources",
                 "--disable-usage-stats"):
        assert theirs[flag] == ours[flag], flag
    assert theirs["--address"] == f"head:{RaySettings().head_port}"
    assert "--block" in theirs  # the container lives as long as the node
    assert worker["deploy"]["replicas"] == 2  # a head and two workers, like the test


def test_serve_placement_asks_only_for_resources_the_nodes_have():
    from backend.core.settings import Settings
    from tests.integration.test_cluster import HEAD, WORKER

    placement = json.loads(_env("head")["RECO_SERVE__PLACEMENT"])
    # the three-node test's placement: the ingress and shared state on the head, variants on
    # the workers
    assert placement == {"Ingress": {HEAD: 1}, "ServingState": {HEAD: 1}, "RecoLog": {HEAD: 1},
                         "Variant": {WORKER: 1}}
    Settings.model_validate({"serve": {"placement": placement}})  # roles the settings know
    offered = (set(json.loads(_flags(_script_line("head", "ray start"))["--resources"]))
               | set(json.loads(_flags(_compose()["services"]["worker"]["command"])
                                ["--resources"])))
    assert {r for asks in placement.values() for r in asks} <= offered


def _field(name: str) -> None:
    """Fails unless the RECO_ variable `name` maps to a Settings field (prefix RECO_, `__`
    between sections), as pydantic-settings reads it."""
    from pydantic import BaseModel

    from backend.core.settings import Settings

    model: type[BaseModel] = Settings
    parts = name.removeprefix("RECO_").lower().split("__")
    for i, part in enumerate(parts):
        assert part in model.model_fields, f"{name}: no field {part!r} in {model.__name__}"
        annotation = model.model_fields[part].annotation
        if i < len(parts) - 1:
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), name
            model = annotation


@pytest.mark.parametrize("service", ["seaweedfs", "broker", "head", "worker", "dashboard"])
def test_every_reco_variable_is_a_setting_and_validates(service, monkeypatch):
    from backend.core.settings import Settings

    env = _env(service)
    names = [k for k in env if k.startswith("RECO_")]
    assert names
    for name in names:
        _field(name)
    for key in [k for k in __import__("os").environ if k.startswith("RECO_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # every value valid where the service runs
    assert settings.var_dir == IMAGE_VAR


def test_the_ports_are_the_platforms_defaults_and_published_on_loopback():
    from backend.core.settings import Settings
    from backend.core.store import StoreSettings

    defaults = Settings(var_dir=IMAGE_VAR)
    services = _compose()["services"]
    assert services["head"]["ports"] == [f"127.0.0.1:{defaults.serve.port}:8000"]
    assert defaults.serve.port == 8000 and defaults.dashboard_port == 8501
    assert services["dashboard"]["ports"] == [f"127.0.0.1:{defaults.dashboard_port}:8501"]
    s3_port = StoreSettings().embedded_port
    assert s3_port == 8333
    assert _flags(services["seaweedfs"]["command"])["-s3.port"] == str(s3_port)
    assert _env("head")["RECO_STORE__ENDPOINT"] == f"http://seaweedfs:{s3_port}"
    assert _env("head")["RECO_KAFKA_BOOTSTRAP_SERVERS"] == "broker:9092"
    assert _flags(services["broker"]["command"]) == {"--listen": "0.0.0.0:9092",
                                                     "--advertise": "broker:9092"}
    assert services["broker"]["command"][:3] == ["reco", "broker", "serve"]
    assert set(services) - {"head", "dashboard"} == {s for s in services
                                                     if "ports" not in services[s]}


def test_the_image_binds_every_interface_where_compose_publishes():
    """The API and the dashboard must bind the container's interfaces for a published port to
    reach them (the image's ENV); the dashboard's RECO_SERVE__HOST names the API's host."""
    image = _image_env()
    assert image["RECO_SERVE__HOST"] == "0.0.0.0" and image["RECO_DASHBOARD_HOST"] == "0.0.0.0"
    assert image["RAY_AUTH_MODE"] == "token" and image["RECO_VAR_DIR"] == str(IMAGE_VAR)
    assert _env("head")["RECO_SERVE__HOST"] == "0.0.0.0"
    assert _env("dashboard")["RECO_DASHBOARD_HOST"] == "0.0.0.0"
    assert _env("dashboard")["RECO_SERVE__HOST"] == "head"
    assert _compose()["services"]["dashboard"]["command"] == ["reco", "dashboard"]


def test_seaweedfs_runs_the_embedded_servers_arguments():
    from backend.core.store import StoreSettings
    from backend.ops.objectstore import server_args

    assert _compose()["services"]["seaweedfs"]["command"] == ["weed", *server_args(
        IMAGE_VAR, "seaweedfs", "0.0.0.0", StoreSettings().embedded_port,
        "/run/secrets/seaweedfs_identities")]
    assert "/run/secrets/seaweedfs_identities" in _mounted("seaweedfs")


def test_secrets_are_files_the_services_mount_never_values(tmp_path):
    from backend.core.runtime import SECRET_MARKERS
    from backend.core.settings import Settings
    from backend.ops.containers import SECRET_FILES, write_compose_secrets

    doc = _compose()
    # each top-level secret is a file `reco compose-secrets` writes
    assert {n: s["file"] for n, s in doc["secrets"].items()} == {
        n: f"./secrets/{f}" for n, f in SECRET_FILES.items()}
    write_compose_secrets(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SECRET_FILES.values())
    for service in doc["services"]:
        env = _env(service)
        for key, value in env.items():
            if any(m in key for m in SECRET_MARKERS):  # only where a secret is, never what
                assert key.endswith(("_PATH", "_FILE")) and value.startswith("/"), key
        for key in ("RECO_STORE__CREDENTIALS_FILE", "RECO_REGISTRY__PUBLIC_KEY"):
            if key in env and service != "broker":
                assert env[key] in _mounted(service), (service, key)
    for service in ("head", "worker"):  # Ray's token: mounted, or copied from the mount
        token = _env(service)["RAY_AUTH_TOKEN_PATH"]
        assert token in _mounted(service) or (
            f'install -m 600 /run/secrets/ray_auth_token "{token}"'
            in doc["services"][service]["command"][2].replace(
                "$${RAY_AUTH_TOKEN_PATH}", token))
    # the head keeps them where the platform looks: ray_env's token, the registry's key
    settings = Settings(var_dir=IMAGE_VAR)
    assert _env("head")["RAY_AUTH_TOKEN_PATH"] == str(settings.run_dir / "ray_auth_token")
    signing = _script_line("head", "install -m 600 /run/secrets/registry_signing_key")
    assert settings.registry.keys_dir is not None
    assert signing[-1].replace("${RECO_VAR_DIR}", str(IMAGE_VAR)) == str(
        settings.registry.keys_dir / SECRET_FILES["registry_signing_key"])
    # secrets never enter a build context
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()


def test_the_written_secrets_are_0600_and_agree(tmp_path):
    from backend.core.store import StoreSettings
    from backend.ops.containers import SECRET_FILES, write_compose_secrets
    from registry.signing import load_private, load_public

    written = write_compose_secrets(tmp_path / "secrets")
    folder = tmp_path / "secrets"
    assert len(written) == len(SECRET_FILES) and folder.stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in folder.iterdir())
    access, secret = StoreSettings(credentials_file=folder / "store.json").credentials()
    ident = json.loads((folder / "seaweedfs-s3.json").read_text())["identities"][0]
    assert ident["credentials"] == [{"accessKey": access, "secretKey": secret}]
    private = load_private(folder / SECRET_FILES["registry_signing_key"])
    public = load_public(folder / SECRET_FILES["registry_public_key"])
    public.verify(private.sign(b"manifest"), b"manifest")  # one key pair
    token = (folder / "ray_auth_token").read_text()
    # a second run keeps every key (new ones would lock the platform out of its own state)
    assert write_compose_secrets(folder) == []
    assert (folder / "ray_auth_token").read_text() == token
    # the identities follow the store's keys: a hand-edited or stale copy is written again
    (folder / "seaweedfs-s3.json").write_text("{}")
    assert write_compose_secrets(folder) == [folder / "seaweedfs-s3.json"]
    assert StoreSettings(credentials_file=folder / "store.json").credentials() == (access,
                                                                                  secret)
    assert json.loads((folder / "seaweedfs-s3.json").read_text())["identities"] == [ident]


def test_healthchecks_and_start_order():
    services = _compose()["services"]
    for name in ("seaweedfs", "broker", "head", "dashboard"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["head"]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"},
                                              "broker": {"condition": "service_healthy"}}
    # the head's `reco up` waits for variant replicas, which only the workers can hold
    assert services["worker"]["depends_on"]["head"] == {"condition": "service_started"}
    assert "/health" in " ".join(services["head"]["healthcheck"]["test"])
    assert _script_line("head", "reco store bucket")  # before anything reads the store


def test_each_broker_start_has_a_cluster_id_of_its_own():
    """A restarted broker holds nothing (memory storage); a new id tells the ingest actors
    to rewind instead of waiting at offsets that are gone."""
    from backend.ops.broker import broker_command

    cmds = [broker_command("tcp://0.0.0.0:9092", "tcp://broker:9092") for _ in range(2)]
    ids = {cmd[cmd.index("--cluster-id") + 1] for cmd in cmds}
    assert len(ids) == 2
    assert cmds[0][cmds[0].index("--advertised-listener-url") + 1] == "tcp://broker:9092"

