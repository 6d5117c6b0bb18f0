"""The settings table: defaults, environment, overrides, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.errors import ConfigError
from hutch.server.config import SETTINGS, Config, load, markdown_table


def test_defaults():
    cfg = load({})
    assert cfg.data_dir == Path("/var/lib/hutch")
    assert (cfg.host, cfg.port, cfg.instance) == ("127.0.0.1", 7711, "hutch")
    assert cfg.subnet == "10.11.0.0/16"
    assert cfg.templates_dir == Path("/var/lib/hutch/templates")
    assert cfg.uid_base == 100000 and cfg.trust_host_cas is True
    assert (cfg.default_timeout, cfg.default_cpu, cfg.default_memory_mb) == (300, 1.0, 1024)
    assert (cfg.default_disk_mb, cfg.default_pids, cfg.default_network) == (2048, 1024, "internet")
    assert cfg.domain == ""
    assert cfg.admin_key_path == Path("/var/lib/hutch/admin.key")


def test_environment_and_overrides():
    env = {"HUTCH_DATA_DIR": "/srv/h", "HUTCH_PORT": "0", "HUTCH_INSTANCE": "abc1",
           "HUTCH_TRUST_HOST_CAS": "no", "HUTCH_DEFAULT_NETWORK": "none",
           "HUTCH_DOMAIN": "sbx.example.test"}
    cfg = load(env, port=1234)
    assert cfg.data_dir == Path("/srv/h") and cfg.templates_dir == Path("/srv/h/templates")
    assert cfg.port == 1234 and cfg.instance == "abc1"
    assert cfg.trust_host_cas is False and cfg.default_network == "none"
    assert cfg.domain == "sbx.example.test"
    assert Config.from_env(env).port == 0
    assert load({"HUTCH_TEMPLATES_DIR": "/t"}).templates_dir == Path("/t")


@pytest.mark.parametrize("var,value", [
    ("HUTCH_PORT", "70000"), ("HUTCH_PORT", "http"), ("HUTCH_INSTANCE", "Bad-Name"),
    ("HUTCH_INSTANCE", "waytoolonginstance"), ("HUTCH_SUBNET", "10.11.0.1/16"),
    ("HUTCH_SUBNET", "10.0.0.0/30"), ("HUTCH_TRUST_HOST_CAS", "maybe"),
    ("HUTCH_DEFAULT_TIMEOUT", "-5"), ("HUTCH_DEFAULT_CPU", "0"),
    ("HUTCH_DEFAULT_NETWORK", "all"), ("HUTCH_LOG_LEVEL", "loud"),
    ("HUTCH_EVENT_LOOP", "trio"),
])
def test_bad_values_name_the_setting(var, value):
    with pytest.raises(ConfigError) as err:
        load({var: value})
    assert var in str(err.value) and repr(value) in str(err.value)


def test_default_timeout_cannot_exceed_max():
    with pytest.raises(ConfigError, match="HUTCH_MAX_TIMEOUT"):
        load({"HUTCH_DEFAULT_TIMEOUT": "100", "HUTCH_MAX_TIMEOUT": "10"})


def test_every_field_is_in_the_table_and_documented():
    fields = set(Config.__dataclass_fields__)
    assert {s.field for s in SETTINGS} == fields
    table = markdown_table()
    for s in SETTINGS:
        assert s.doc and f"`{s.env}`" in table


def test_overrides_are_checked_like_the_environment():
    with pytest.raises(ConfigError, match="--port"):
        load({}, port=70000)
    assert load({"HUTCH_PORT": "1"}, port=None).port == 1
    with pytest.raises(TypeError):
        load({}, nonsense=1)


def test_resource_defaults_must_fit_the_limits():
    with pytest.raises(ConfigError, match="HUTCH_MAX_MEMORY_MB"):
        load({"HUTCH_DEFAULT_MEMORY_MB": "4096", "HUTCH_MAX_MEMORY_MB": "1024"})
    assert load({}).max_cpu >= 1
