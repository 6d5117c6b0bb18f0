"""Resolution of the server URL and API key, including the local admin key convenience."""

from __future__ import annotations

from hutch.sdk import _config


def test_defaults():
    config = _config.resolve(env={}, euid=1000)
    assert config.url == "http://127.0.0.1:7711"
    assert config.api_key is None
    assert config.request_timeout == 60.0


def test_environment_then_arguments_win():
    env = {"HUTCH_URL": "http://h.example:1/", "HUTCH_API_KEY": "from-env"}
    config = _config.resolve(env=env, euid=1000)
    assert (config.url, config.api_key) == ("http://h.example:1", "from-env")
    config = _config.resolve(url="http://other:2", api_key="arg", env=env, euid=1000)
    assert (config.url, config.api_key) == ("http://other:2", "arg")


def test_root_on_loopback_reads_the_admin_key(tmp_path):
    (tmp_path / "admin.key").write_text("e2b_" + "a" * 40 + "\n")
    env = {"HUTCH_DATA_DIR": str(tmp_path)}
    for url in ("http://127.0.0.1:7711", "http://localhost:5", "http://[::1]:7"):
        assert _config.resolve(url=url, env=env, euid=0).api_key == "e2b_" + "a" * 40


def test_admin_key_is_never_used_for_remote_urls_or_non_root(tmp_path):
    (tmp_path / "admin.key").write_text("secret")
    env = {"HUTCH_DATA_DIR": str(tmp_path)}
    assert _config.resolve(url="http://10.0.0.5:7711", env=env, euid=0).api_key is None
    assert _config.resolve(url="http://sandbox.example", env=env, euid=0).api_key is None
    assert _config.resolve(url="http://127.0.0.1:7711", env=env, euid=1000).api_key is None


def test_explicit_key_beats_admin_key(tmp_path):
    (tmp_path / "admin.key").write_text("admin")
    env = {"HUTCH_DATA_DIR": str(tmp_path), "HUTCH_API_KEY": "mine"}
    assert _config.resolve(env=env, euid=0).api_key == "mine"


def test_missing_admin_key_file_means_no_key(tmp_path):
    assert _config.resolve(env={"HUTCH_DATA_DIR": str(tmp_path)}, euid=0).api_key is None


def test_per_call_timeout():
    config = _config.resolve(env={}, euid=1000, request_timeout=30)
    assert config.timeout(None) == 30
    assert config.timeout(5) == 5
    assert config.timeout(0) is None  # 0 means no limit
