from __future__ import annotations

from backend.core.settings import Settings
from backend.data.lake import Lake


def test_defaults_live_under_var(settings):
    assert settings.kafka.embedded
    assert settings.kafka.servers == "127.0.0.1:9092"
    assert Lake.open(settings).root == str(settings.var_dir / "lake")
    assert settings.store.uri == settings.var_dir.as_uri()
    assert settings.kafka.partitions == 3


def test_env_prefix_and_nested_sections(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("RECO_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("RECO_KAFKA__PARTITIONS", "6")
    monkeypatch.setenv("RECO_SCHEDULE__RETRAIN_INTERVAL", "600")
    s = Settings()
    assert s.kafka.partitions == 6 and s.schedule.retrain_interval == 600
    assert s.var_dir == tmp_path


def test_bootstrap_servers_shortcut_selects_external_cluster(settings, monkeypatch):
    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    s = Settings()
    assert not s.kafka.embedded
    assert s.kafka.client_config()["bootstrap_servers"] == ["k1:9093", "k2:9093"]


def test_sasl_ssl_options_pass_through(settings, monkeypatch):
    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP_SERVERS", "k1:9093")
    monkeypatch.setenv("RECO_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("RECO_KAFKA__SASL_PLAIN_USERNAME", "reco")
    monkeypatch.setenv("RECO_KAFKA__SASL_PLAIN_PASSWORD", "s3cret")
    monkeypatch.setenv("RECO_KAFKA__SSL_CAFILE", "/etc/ca.pem")
    s = Settings()
    cfg = s.kafka.client_config()
    assert cfg["security_protocol"] == "SASL_SSL"
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cfg["sasl_plain_username"] == "reco" and cfg["sasl_plain_password"] == "s3cret"
    assert cfg["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(s)  # secrets never in reprs or logs


def test_serve_config_is_a_valid_serve_config_and_gets_the_settings(tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from backend.serving.deploy import CONFIG, effective_config

    ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))  # as shipped
    s = Settings(var_dir=tmp_path, serve={"port": 8123, "split": 0.7, "ingress_replicas": 2})
    cfg = effective_config(s)
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    assert cfg["http_options"]["port"] == 8123
    assert app["args"] == {"split": 0.7, "salt": "exp-1", "ingress_replicas": 2}
    assert app["runtime_env"]["env_vars"]["RECO_VAR_DIR"] == str(tmp_path.resolve())
    names = {d["name"] for d in app["deployments"]}
    assert names == {"Ingress", "VariantA", "VariantB", "ServingState", "RecoLog"}


def test_job_env_forwards_settings_but_never_secrets(settings, monkeypatch):
    """Ray logs every runtime_env in plain text: secrets stay out of it."""
    from backend.core.runtime import job_env

    monkeypatch.setenv("RECO_KAFKA__PARTITIONS", "6")
    monkeypatch.setenv("RECO_SIM__API_KEY", "sim-secret")
    monkeypatch.setenv("RECO_KAFKA__SASL_PLAIN_PASSWORD", "kafka-secret")
    monkeypatch.setenv("RECO_STORE__ACCESS_KEY", "store-access")
    monkeypatch.setenv("RECO_STORE__SECRET_KEY", "store-secret")
    monkeypatch.setenv("RECO_STORE__URI", "s3://reco/p")
    env = job_env(settings)
    assert env["RECO_KAFKA__PARTITIONS"] == "6" and env["RECO_VAR_DIR"] == str(settings.var_dir)
    assert env["RECO_STORE__URI"] == "s3://reco/p"  # where the store is, not how to get in
    assert not {"sim-secret", "kafka-secret", "store-access", "store-secret"} & set(env.values())


HAPROXY_CFG = """global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend prometheus
    bind :{metrics}
    mode http
    http-request use-service prometheus-exporter if { path /metrics }
frontend http_frontend
    bind 127.0.0.1:{api}
    default_backend none
backend none
    http-request return status 404
listen stats
  bind *:{stats}
  stats enable
"""


def test_haproxy_wrapper_pins_the_side_listeners_to_the_api_host(settings, tmp_path):
    """Ray's template binds HAProxy's stats and Prometheus listeners to every interface; the
    wrapper Serve runs instead of HAProxy moves them to the API's host, adds X-Forwarded-For
    once, and then runs the real HAProxy (here its config check, `-c`)."""
    import shutil
    import subprocess

    from backend.ops.raycluster import haproxy_dir, haproxy_wrapper, serve_env

    try:
        wrapper = haproxy_wrapper(settings)
        assert wrapper.stat().st_mode & 0o777 == 0o700
        assert serve_env(settings)["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(wrapper)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.replace("{metrics}", "19101").replace("{stats}", "18404")
                       .replace("{api}", "18000"))
        for _ in range(2):  # Serve reloads with the same file: nothing is added twice
            out = subprocess.run([str(wrapper), "-c", "-f", str(cfg)], capture_output=True,
                                 text=True, timeout=30)
            assert out.returncode == 0, out.stdout + out.stderr
        text = cfg.read_text()
        assert "    bind 127.0.0.1:19101\n" in text and "  bind 127.0.0.1:18404\n" in text
        assert "    bind 127.0.0.1:18000\n" in text and "bind :" not in text
        assert text.count("option forwardfor") == 1
        assert text.index("option forwardfor") > text.index("defaults")
        wild = settings.model_copy(update={"serve": settings.serve.model_copy(
            update={"host": "0.0.0.0"})})
        assert "sed -i -E" not in haproxy_wrapper(wild).read_text()  # nothing to pin
    finally:
        shutil.rmtree(haproxy_dir(settings), ignore_errors=True)


def test_the_dashboard_binds_where_the_setting_says(monkeypatch, tmp_path):
    """127.0.0.1 on a host; 0.0.0.0 in a container, where a published port must reach it."""
    import pytest

    from backend.ops.platform import dashboard_command, dashboard_url

    s = Settings(var_dir=tmp_path)
    cmd = dashboard_command(s.dashboard_port, s.dashboard_host)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert dashboard_url(s) == "http://127.0.0.1:8501"
    monkeypatch.setenv("RECO_DASHBOARD_HOST", "0.0.0.0")
    monkeypatch.setenv("RECO_DASHBOARD_PORT", "9501")
    s = Settings(var_dir=tmp_path)
    cmd = dashboard_command(s.dashboard_port, s.dashboard_host)
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--server.port") + 1] == "9501"
    assert dashboard_url(s) == "http://127.0.0.1:9501"  # a wildcard bind answers on loopback
    assert dashboard_url(s.model_copy(update={"dashboard_host": "::1"})) == "http://[::1]:9501"
    monkeypatch.setenv("RECO_DASHBOARD_HOST", "0.0.0.0; rm -rf /")
    with pytest.raises(ValueError, match="dashboard_host"):
        Settings(var_dir=tmp_path)


def test_the_course_topic_must_be_an_external_topic(monkeypatch, tmp_path):
    import pytest

    monkeypatch.setenv("RECO_INGEST__COURSE_TOPIC", "events.rating")
    with pytest.raises(ValueError, match="one of the event topics"):
        Settings(var_dir=tmp_path)
    monkeypatch.setenv("RECO_INGEST__COURSE_TOPIC", "course.stream")
    assert Settings(var_dir=tmp_path).ingest.course_topic == "course.stream"
