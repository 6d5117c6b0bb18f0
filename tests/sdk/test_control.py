"""The control-plane shapes without a server: the create body, port host names and URLs."""

from __future__ import annotations

import pytest

from hutch import errors
from hutch.sdk import _config, _control


def test_create_body_defaults_and_fields():
    assert _control.create_body() == {"templateID": "base", "timeout": 300,
                                      "allow_internet_access": True}
    body = _control.create_body("code-interpreter", 60, {"k": "v"}, {"E": "1"}, False, None,
                                cpu=2, memory_mb=1024, disk_mb=4096, network="none")
    assert body == {
        "templateID": "code-interpreter", "timeout": 60, "allow_internet_access": False,
        "metadata": {"k": "v"}, "envVars": {"E": "1"}, "secure": False,
        "cpuCount": 2, "memoryMB": 1024, "diskSizeMB": 4096,
    }
    assert _control.create_body(cpu=0.5)["cpuCount"] == 0.5
    assert _control.create_body(cpu=2.0)["cpuCount"] == 2


def test_network_and_allow_internet_access_agree():
    assert _control.internet(None, None) is True
    assert _control.internet(None, False) is False
    assert _control.internet("none", False) is False
    assert _control.internet("internet", None) is True
    for network, allow in (("none", True), ("internet", False), ("wifi", None)):
        with pytest.raises(errors.InvalidArgumentError):
            _control.internet(network, allow)


@pytest.mark.parametrize("bad", [{"cpu": -1}, {"cpu": True}, {"memory_mb": 0},
                                 {"memory_mb": "512"}, {"disk_mb": 10.5}])
def test_bad_resources(bad):
    with pytest.raises(errors.InvalidArgumentError):
        _control.create_body(**bad)


def test_hosts_urls_and_headers():
    assert _control.host(3000, "abc123", "sbx.example.com") == "3000-abc123.sbx.example.com"
    assert (_control.url("https://hutch.example.com", 8080, "abc", "hutch.example.com", "/x")
            == "https://8080-abc.hutch.example.com/x")
    assert (_control.url("http://127.0.0.1:7711", 80, "abc", "hutch.test")
            == "http://80-abc.hutch.test:7711/")
    assert _control.routing_headers(5000, "abc") == {"E2b-Sandbox-Id": "abc",
                                                     "E2b-Sandbox-Port": "5000"}
    with pytest.raises(errors.InvalidArgumentError, match="HUTCH_DOMAIN"):
        _control.host(3000, "abc", None)
    for port in (0, 65536, "80", True):
        with pytest.raises(errors.InvalidArgumentError):
            _control.routing_headers(port, "abc")


def test_domain_setting():
    assert _config.resolve(env={}, euid=1000).domain is None
    assert _config.resolve(env={"HUTCH_DOMAIN": "hutch.test."}, euid=1000).domain == "hutch.test"
    assert _config.resolve(domain="a.b", env={"HUTCH_DOMAIN": "c.d"}, euid=1000).domain == "a.b"


def test_idempotency_header():
    assert _control.idempotency_header(None) == {}
    assert _control.idempotency_header("k1") == {"Idempotency-Key": "k1"}
    for bad in ("", "x" * 256, 5):
        with pytest.raises(errors.InvalidArgumentError):
            _control.idempotency_header(bad)
