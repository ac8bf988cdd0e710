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


def test_a_var_folder_with_spaces_and_brackets_is_the_same_folder(tmp_path, monkeypatch):
    """The default URI is the var folder's file:// URI, percent-escaped; the store and the
    lake must land in the folder itself, not in one named with the escapes."""
    from backend.data.lake import Lake
    from tests.unit.test_lake import rating_frame

    for key in [k for k in __import__("os").environ if k.startswith("RECO_")]:
        monkeypatch.delenv(key)
    var = tmp_path / "batch (platform)"
    s = Settings(var_dir=var)
    assert "%20" in (s.store.uri or "") and s.store.local_root == var
    s.shared_store().put("a/b.json", b"1")
    Lake.open(s).write("events.rating", rating_frame(2))
    assert (var / "a" / "b.json").exists() and (var / "lake" / "events.rating").is_dir()
    assert Lake.open(s).count("events.rating") == 2
    assert not list(tmp_path.glob("*%*"))
