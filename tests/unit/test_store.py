"""The shared store on a local folder (the S3 side: tests/integration/test_store.py)."""

from __future__ import annotations

import json

import pytest

from backend.core.errors import ConfigError
from backend.core.settings import Settings
from backend.core.store import Store, StoreSettings
from tests.store_cases import check_concurrent_appends, check_objects, check_record_log


def test_objects_on_a_local_folder(tmp_path):
    check_objects(Store.local(tmp_path / "s"))
    assert (tmp_path / "s" / "t" / "b" / "c.json").read_bytes() == b"first"  # keys are paths


def test_record_log_on_a_local_folder(tmp_path):
    check_record_log(Store.local(tmp_path))


def test_concurrent_appends_on_a_local_folder(tmp_path):
    check_concurrent_appends(StoreSettings(uri=(tmp_path / "s").as_uri()))


def test_the_default_store_is_the_var_folder(settings):
    assert settings.store.uri == settings.var_dir.as_uri()
    assert not settings.store.is_s3 and not settings.store.embedded
    assert Store.open(settings.store).is_local


def test_s3_credentials_come_from_settings_or_a_private_file(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("RECO_"):
            monkeypatch.delenv(key)
    s = Settings(var_dir=tmp_path, store={"uri": "s3://reco/platform"})
    assert s.store.embedded and s.store.endpoint_url == "http://127.0.0.1:8333"
    assert s.store.credentials_file == tmp_path / "keys" / "store.json"
    with pytest.raises(ConfigError, match="no credentials"):
        s.store.credentials()
    path = s.store.credentials_file
    path.parent.mkdir()
    path.write_text(json.dumps({"access_key": "ak", "secret_key": "sk"}))
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        s.store.credentials()
    path.chmod(0o600)
    assert s.store.credentials() == ("ak", "sk")
    monkeypatch.setenv("RECO_STORE__ACCESS_KEY", "env-ak")
    monkeypatch.setenv("RECO_STORE__SECRET_KEY", "env-sk")
    s = Settings(var_dir=tmp_path, store={"uri": "s3://reco", "endpoint": "http://10.0.0.5:9000"})
    assert not s.store.embedded and s.store.credentials() == ("env-ak", "env-sk")
    assert "env-sk" not in repr(s.store)


@pytest.mark.parametrize("uri", [
    "s3://", "s3://A_B", "http://x", "file://relative", "s3://b/../x y"])
def test_store_uri_is_checked(uri, tmp_path):
    with pytest.raises(ValueError):
        StoreSettings(uri=uri)
