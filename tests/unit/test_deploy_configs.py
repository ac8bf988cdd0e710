"""The deployment files are checked against their tools' own schemas."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_ray_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(cfg)  # raises jsonschema.ValidationError on any schema violation
    assert set(cfg["available_node_types"]) == {"head", "cpu_worker"}
    setup = "\n".join(cfg["setup_commands"])
    assert "--require-hashes" in setup and "requirements.lock" in setup
    for cmd in cfg["head_start_ray_commands"][1:] + cfg["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd and "RAY_AUTH_TOKEN_PATH=" in cmd
    assert "--dashboard-host=127.0.0.1" in cfg["head_start_ray_commands"][1]


def test_ray_schema_check_catches_a_broken_config():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    cfg["available_node_types"]["head"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(cfg)


def test_serve_config_validates_against_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    app = schema.applications[0]
    assert app.import_path == "backend.serving.builder:build_app"
    scaled = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    for name in ("VariantA", "VariantB"):
        auto = scaled[name]["autoscaling_config"]
        assert auto["min_replicas"] >= 1 and auto["max_replicas"] >= auto["min_replicas"]
        assert auto["target_ongoing_requests"] > 0


def test_the_builder_gets_its_args_validated_into_appargs(monkeypatch, tmp_path):
    """Serve validates the config's args into the builder's annotated model (its typed
    builder); the graph binds without a cluster."""
    import pydantic
    import pytest
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from backend.serving.builder import build_app

    monkeypatch.setenv("RECO_VAR_DIR", str(tmp_path / "var"))
    app = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    built = call_user_app_builder_with_args_if_necessary(build_app, app["args"] | {
        "b_runtime": {"tail_slots": 3}})
    assert isinstance(built, Application)
    with pytest.raises(pydantic.ValidationError):
        call_user_app_builder_with_args_if_necessary(build_app, {"split": 2})


def test_dockerfile_passes_hadolint():
    import subprocess
    import sys

    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), "--failure-threshold", "info", "Dockerfile"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes" in text and "USER 10001" in text and "HEALTHCHECK" in text
    # inside the container the API and the dashboard bind every interface (`docker run -p`)
    assert "RECO_DASHBOARD_HOST=0.0.0.0" in text and "RECO_SERVE__HOST=0.0.0.0" in text


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    hadolint = Path(sys.executable).with_name("hadolint")
    out = subprocess.run([str(hadolint), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3007" in out.stdout


def test_the_deployed_config_has_one_variant_deployment_per_settings_variant(monkeypatch,
                                                                              tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from backend.core.settings import Settings
    from backend.serving.deploy import effective_config

    monkeypatch.setenv("RECO_VARIANTS", '{"A": {"model": "item_knn"}, '
                                        '"C": {"model": "als", "params": {"factors": 8}}}')
    settings = Settings(var_dir=tmp_path / "var")
    assert list(settings.variants) == ["A", "C"]
    cfg = effective_config(settings)
    ServeDeploySchema.model_validate(cfg)
    names = [d["name"] for d in cfg["applications"][0]["deployments"]]
    assert "VariantB" not in names and {"VariantA", "VariantC", "Ingress"} <= set(names)
    by_name = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    assert by_name["VariantC"]["autoscaling_config"] == by_name["VariantA"]["autoscaling_config"]
    env = cfg["applications"][0]["runtime_env"]["env_vars"]
    assert json.loads(env["RECO_VARIANTS"])["C"]["params"] == {"factors": 8}
