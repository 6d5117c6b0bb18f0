"""The control-plane request shapes and the names a sandbox's ports are reached by. No I/O.

Creation follows E2B's body (``templateID``, ``timeout``, ``metadata``, ``envVars``,
``allow_internet_access``, ``secure``) plus hutch's resource fields (``cpuCount``,
``memoryMB``, ``diskSizeMB``); a field left unset is not sent, so the server's defaults apply.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union
from urllib.parse import urlsplit

from hutch import errors

DEFAULT_TEMPLATE = "base"
# Names the template used when a create names none, for code that cannot be changed (E2B
# examples that call Sandbox() and then run_code: HUTCH_TEMPLATE=code-interpreter).
TEMPLATE_ENV = "HUTCH_TEMPLATE"
DEFAULT_TIMEOUT = 300
NETWORKS = ("internet", "none")
# A create answers in well under a second, except the first one of a built-in template the
# server has not built yet (code-interpreter: about two minutes): it waits for that.
TEMPLATE_BUILD_PATIENCE = 900.0
# What the server's data plane reads to route a request sent to its own URL (proxy.py).
SANDBOX_ID_HEADER = "E2b-Sandbox-Id"
SANDBOX_PORT_HEADER = "E2b-Sandbox-Port"
TRAFFIC_TOKEN_HEADER = "E2B-Traffic-Access-Token"


def _positive(value: Any, name: str, kind: type = int) -> Union[int, float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise errors.InvalidArgumentError(f"{name} must be a positive number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise errors.InvalidArgumentError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return int(value) if int(value) == value else float(value)


def internet(network: Optional[str], allow_internet_access: Optional[bool]) -> bool:
    """Whether the sandbox may reach the internet: ``network`` and E2B's flag, reconciled."""
    if network is None:
        return True if allow_internet_access is None else bool(allow_internet_access)
    if network not in NETWORKS:
        raise errors.InvalidArgumentError(
            f"network must be one of {', '.join(NETWORKS)}, got {network!r}")
    wanted = network == "internet"
    if allow_internet_access is not None and bool(allow_internet_access) != wanted:
        raise errors.InvalidArgumentError(
            f"network={network!r} contradicts allow_internet_access={allow_internet_access!r}")
    return wanted


def create_timeout(request_timeout: Optional[float]) -> Optional[float]:
    """The request timeout of a create: the configured one, raised to cover a first build
    (0 or None, meaning no limit, stay as they are)."""
    if not request_timeout:
        return request_timeout
    return max(request_timeout, TEMPLATE_BUILD_PATIENCE)


def create_body(template: Optional[str] = None, timeout: Optional[int] = None,
                metadata: Optional[Dict[str, str]] = None,
                envs: Optional[Dict[str, str]] = None, secure: Optional[bool] = None,
                allow_internet_access: Optional[bool] = None, *,
                cpu: Optional[float] = None, memory_mb: Optional[int] = None,
                disk_mb: Optional[int] = None,
                network: Optional[Union[str, Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The JSON body of ``POST /v2/sandboxes``; bad arguments fail here, before any request.

    ``network`` is a mode (``"internet"``, ``"none"``) or E2B's egress object
    (``{"allow_out": [...], "deny_out": [...], "allow_public_traffic": bool}``)."""
    rules = None
    if isinstance(network, dict):
        rules, network = network_body(network), None
    body: Dict[str, Any] = {
        "templateID": template or os.environ.get(TEMPLATE_ENV) or DEFAULT_TEMPLATE,
        "timeout": DEFAULT_TIMEOUT if timeout is None else int(timeout),
        "allow_internet_access": internet(network, allow_internet_access),
    }
    if rules is not None:
        body["network"] = rules
    if metadata:
        body["metadata"] = dict(metadata)
    if envs:
        body["envVars"] = dict(envs)
    if secure is not None:
        body["secure"] = bool(secure)
    if cpu is not None:
        body["cpuCount"] = _positive(cpu, "cpu", float)
    if memory_mb is not None:
        body["memoryMB"] = _positive(memory_mb, "memory_mb")
    if disk_mb is not None:
        body["diskSizeMB"] = _positive(disk_mb, "disk_mb")
    return body


_NETWORK_FIELDS = {"allow_out": "allowOut", "deny_out": "denyOut",
                   "allow_public_traffic": "allowPublicTraffic",
                   "allow_internet_access": "allow_internet_access"}


def network_body(network: Dict[str, Any]) -> Dict[str, Any]:
    """E2B's network object on the wire (snake_case keys as in the e2b SDK, or the wire's own
    camelCase); unknown keys are refused here rather than by the server."""
    out: Dict[str, Any] = {}
    for key, value in network.items():
        wire = _NETWORK_FIELDS.get(key) or (key if key in _NETWORK_FIELDS.values() else None)
        if wire is None:
            raise errors.InvalidArgumentError(
                f"unknown network option {key!r}; known: {', '.join(_NETWORK_FIELDS)}")
        if wire in ("allowOut", "denyOut"):
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise errors.InvalidArgumentError(f"{key} must be a list of strings")
            value = list(value)
        out[wire] = value
    return out


def idempotency_header(key: Optional[str]) -> Dict[str, str]:
    """E2B's ``Idempotency-Key``: the server answers a repeated create with the same sandbox."""
    if key is None:
        return {}
    if not isinstance(key, str) or not 1 <= len(key) <= 255:
        raise errors.InvalidArgumentError("idempotency_key must be a string of 1-255 characters")
    return {"Idempotency-Key": key}


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise errors.InvalidArgumentError(f"port must be 1..65535, got {port!r}")
    return port


def host(port: int, sandbox_id: str, domain: Optional[str]) -> str:
    """``<port>-<sandbox id>.<domain>``: the name the server routes to that port (E2B's shape)."""
    _check_port(port)
    if not domain:
        raise errors.InvalidArgumentError(
            "no domain for host routing: the server answers <port>-<id>.<domain> only when it "
            "runs with HUTCH_DOMAIN (pass domain= or set HUTCH_DOMAIN here too); without "
            "wildcard DNS send requests to the server's URL with get_headers(port)")
    return f"{port}-{sandbox_id}.{domain}"


def url(server_url: str, port: int, sandbox_id: str, domain: Optional[str], path: str = "/") -> str:
    """A URL through host routing: the server URL's scheme and port, the sandbox's host name."""
    parts = urlsplit(server_url)
    netloc = host(port, sandbox_id, domain)
    if parts.port is not None:
        netloc += f":{parts.port}"
    return f"{parts.scheme or 'http'}://{netloc}/{path.lstrip('/')}"


def routing_headers(port: int, sandbox_id: str) -> Dict[str, str]:
    """Headers that send a request made to the server's own URL on to ``port`` in the sandbox."""
    return {SANDBOX_ID_HEADER: sandbox_id, SANDBOX_PORT_HEADER: str(_check_port(port))}
