"""The server's settings: one table, resolved once from the environment.

Every tunable of the server is a row of :data:`SETTINGS` (environment variable, default, meaning).
:func:`load` reads them once at start-up into a frozen :class:`Config`, which is then passed
down explicitly; nothing below the server reads the environment. A bad value stops start-up with
a :class:`~hutch.errors.ConfigError` that names the variable, the value and what was expected.

``markdown_table()`` renders the same rows for the operations guide, so the documentation cannot
drift from the code.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from hutch.errors import ConfigError


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("expected a TCP port 0-65535 (0 = any free port)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected 0 or a positive integer")
    return value


_POOL_ENTRY = re.compile(r"^([a-z0-9][a-z0-9._-]*)=(\d+)$")


def _pools(text: str) -> dict[str, int]:
    """``base=4,code-interpreter=2`` → {template: size}; a bare number is the base pool."""
    text = text.strip()
    if text.isdigit():
        return {"base": int(text)} if int(text) else {}
    out: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        m = _POOL_ENTRY.match(entry)
        if m is None:
            raise ValueError(f"expected template=size entries separated by commas, "
                             f"got {entry!r}")
        if m.group(1) in out:
            raise ValueError(f"template {m.group(1)!r} is named twice")
        if int(m.group(2)):
            out[m.group(1)] = int(m.group(2))
    return out


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError("expected 0 or a positive number")
    return value


def _instance(text: str) -> str:
    # The instance names host objects (nft table, bridge "<instance>0", cgroup parent), and
    # interface names are limited to 15 bytes.
    if not re.fullmatch(r"[a-z][a-z0-9]{0,9}", text):
        raise ValueError("expected 1-10 lowercase letters/digits starting with a letter")
    return text


def _subnet(text: str) -> str:
    net = ipaddress.IPv4Network(text, strict=True)
    if net.prefixlen > 24:
        raise ValueError("expected an IPv4 network of /24 or larger")
    return str(net)


def _network_mode(text: str) -> str:
    if text not in ("internet", "none"):
        raise ValueError("expected 'internet' or 'none'")
    return text


def _log_level(text: str) -> str:
    low = text.lower()
    if low not in ("debug", "info", "warning", "error"):
        raise ValueError("expected debug, info, warning or error")
    return low


def _event_loop(text: str) -> str:
    low = text.strip().lower()
    if low not in ("uvloop", "asyncio"):
        raise ValueError("expected uvloop or asyncio")
    return low


def _text(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class Setting:
    """One row of the table: where a value comes from and what it means."""

    field: str
    env: str
    default: str          # as text, parsed like a user-supplied value; "" = unset
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "HUTCH_DATA_DIR", "/var/lib/hutch", Path,
            "State directory: the SQLite store, admin.key, the runtime's sandbox state."),
    Setting("host", "HUTCH_HOST", "127.0.0.1", _text,
            "Address the HTTP server listens on (control plane and data plane share it)."),
    Setting("port", "HUTCH_PORT", "7711", _port, "TCP port of the HTTP server."),
    Setting("instance", "HUTCH_INSTANCE", "hutch", _instance,
            "Name carried by every host object (nft table, bridge, cgroup parent) so that "
            "several servers on one host never collide."),
    Setting("subnet", "HUTCH_SUBNET", "10.11.0.0/16", _subnet,
            "IPv4 network the sandboxes' addresses are taken from."),
    Setting("templates_dir", "HUTCH_TEMPLATES_DIR", "", Path,
            "Where built templates live (default: <data_dir>/templates)."),
    Setting("oci_runtime", "HUTCH_OCI_RUNTIME", "runc", _text,
            "The OCI runtime binary that runs sandboxes (runc, crun, runsc)."),
    Setting("agent_fork", "HUTCH_AGENT_FORK", "true", _bool,
            "With runc or crun, fork each sandbox's agent from one host process that imported "
            "it once, which then enters the sandbox with its confinement (namespaces, cgroups, "
            "seccomp, Landlock, capabilities), instead of starting Python inside: a cold "
            "create is about 90 ms of CPU cheaper (docs/design.md, \"The agent's zygote\"). "
            "Off, or with another runtime, or for a template without `sleep`, the agent "
            "starts inside on the template's python3."),
    Setting("uid_base", "HUTCH_UID_BASE", "100000", _positive_int,
            "First host uid/gid mapped into sandboxes (root inside = this uid outside)."),
    Setting("insecure_registries", "HUTCH_INSECURE_REGISTRIES", "", _text,
            "Comma-separated registries (host[:port]) whose images are pulled over plain HTTP "
            "or without checking their certificate (a registry on loopback, say)."),
    Setting("registry_auth", "HUTCH_REGISTRY_AUTH", "", _text,
            "A containers-auth.json file (as `skopeo login` or `docker login` write) with the "
            "credentials of private registries images are pulled from (empty: none)."),
    Setting("trust_host_cas", "HUTCH_TRUST_HOST_CAS", "1", _bool,
            "Copy the host's CA certificates into template builds (for TLS-intercepting "
            "networks)."),
    Setting("default_timeout", "HUTCH_DEFAULT_TIMEOUT", "300", _positive_int,
            "Seconds a sandbox lives when the create request names no timeout."),
    Setting("max_timeout", "HUTCH_MAX_TIMEOUT", "86400", _positive_int,
            "Longest timeout (seconds) a create, connect or set-timeout call may ask for."),
    Setting("default_cpu", "HUTCH_DEFAULT_CPU", "1", _positive_float,
            "CPU cores per sandbox (cgroup quota)."),
    Setting("default_memory_mb", "HUTCH_DEFAULT_MEMORY_MB", "1024", _positive_int,
            "Memory limit per sandbox in MiB (no swap)."),
    Setting("default_disk_mb", "HUTCH_DEFAULT_DISK_MB", "2048", _positive_int,
            "Hard quota of a sandbox's writable layer in MiB."),
    Setting("default_pids", "HUTCH_DEFAULT_PIDS", "1024", _positive_int,
            "Most processes/threads a sandbox may hold."),
    Setting("max_cpu", "HUTCH_MAX_CPU", "", _positive_float,
            "Most CPU cores a create may ask for (default: the host's CPU count)."),
    Setting("max_memory_mb", "HUTCH_MAX_MEMORY_MB", "8192", _positive_int,
            "Most memory (MiB) a create may ask for."),
    Setting("max_disk_mb", "HUTCH_MAX_DISK_MB", "20480", _positive_int,
            "Largest writable-layer quota (MiB) a create may ask for."),
    Setting("default_network", "HUTCH_DEFAULT_NETWORK", "internet", _network_mode,
            "Network mode when a create request does not say: 'internet' (egress with the "
            "always-deny list) or 'none'."),
    Setting("egress_max_connections", "HUTCH_EGRESS_MAX_CONNECTIONS", "512", _non_negative_int,
            "Most connections one sandbox may have open through the host at once (new ones "
            "beyond it are refused: TCP with a reset), so one sandbox cannot exhaust the "
            "host's connection tracking (0: no cap)."),
    Setting("egress_rate_mbit", "HUTCH_EGRESS_RATE_MBIT", "1000", _non_negative_int,
            "Bandwidth cap per sandbox and direction through the host, in Mbit/s; packets "
            "past it are dropped (TCP slows down), so one sandbox cannot starve the others "
            "(0: no cap)."),
    Setting("egress_proxy_port", "HUTCH_EGRESS_PROXY_PORT", "15001", _port,
            "Port of the egress proxy on the sandbox gateway (the bridge's address): for a "
            "sandbox whose policy names domains, its TCP to ports 80 and 443 is redirected "
            "there and judged by the HTTP Host or TLS server name it asks for."),
    Setting("public_ports", "HUTCH_PUBLIC_PORTS", "false", _bool,
            "Whether a sandbox's ports (its web apps) answer anyone who knows its id when the "
            "create does not say (E2B's allowPublicTraffic); by default they answer only "
            "requests carrying the sandbox's trafficAccessToken as E2B-Traffic-Access-Token "
            "(hutch's SDK adds it). A sandbox created with secure: false has no token, so its "
            "ports are public."),
    Setting("max_sandboxes", "HUTCH_MAX_SANDBOXES", "200", _positive_int,
            "Most sandboxes alive at once; a create beyond it is refused with 429 (the SDKs "
            "retry) so a runaway client cannot exhaust the host."),
    Setting("tenant_max_sandboxes", "HUTCH_TENANT_MAX_SANDBOXES", "50", _non_negative_int,
            "Most sandboxes one API key may have alive at once, unless the key has its own "
            "limit (POST/PATCH /keys); a create beyond it is refused with 429. The admin key "
            "is exempt from all tenant quotas (0: no limit)."),
    Setting("tenant_max_cpu", "HUTCH_TENANT_MAX_CPU", "50", _non_negative_float,
            "Most CPU cores (cpuCount summed over its live sandboxes) one API key may hold, "
            "unless the key has its own limit (0: no limit)."),
    Setting("tenant_max_memory_mb", "HUTCH_TENANT_MAX_MEMORY_MB", "51200", _non_negative_int,
            "Most memory in MiB (memoryMB summed over its live sandboxes) one API key may "
            "hold, unless the key has its own limit (0: no limit)."),
    Setting("tenant_creates_per_minute", "HUTCH_TENANT_CREATES_PER_MINUTE", "60",
            _non_negative_int,
            "Most creates one API key may start in any 60 seconds, unless the key has its own "
            "limit (0: no limit)."),
    Setting("pools", "HUTCH_POOL", "0", _pools,
            "Warm pools: sandboxes kept started and ready per built-in template, as "
            "`base=8,code-interpreter=2` (a bare number: a pool of the base template; 0: "
            "none). A create takes one in milliseconds and gives it the request's env, "
            "metadata, timeout, CPU, memory and egress policy; a create a pool cannot serve "
            "(another disk size or network mode, no access token) starts cold. "
            "`code-interpreter` sandboxes are pooled with their Python kernel started, "
            "numpy, pandas and matplotlib imported, and the kernels' zygote started (a new "
            "context or restart is ready in about 40 ms; docs/design.md, \"The code "
            "interpreter\")."),
    Setting("audit_retention_days", "HUTCH_AUDIT_RETENTION_DAYS", "30", _non_negative_float,
            "Days the audit trail (GET /sandboxes/{id}/audit: API calls, lifecycle, "
            "processes, files, egress) keeps an event; older ones are deleted at start and "
            "every hour (0: kept until the per-sandbox cap pushes them out)."),
    Setting("audit_keep", "HUTCH_AUDIT_KEEP", "10000", _positive_int,
            "Most audit events kept per sandbox and kind (per API key and kind for calls "
            "about no sandbox); the oldest go first."),
    Setting("domain", "HUTCH_DOMAIN", "", _text,
            "Domain for host routing: requests to <port>-<sandbox id>.<domain> go to that "
            "sandbox (empty: header routing only)."),
    Setting("http_head_timeout", "HUTCH_HTTP_HEAD_TIMEOUT", "30", _positive_float,
            "Seconds a client has to send a request's line and headers (from its first byte, "
            "or from connecting); slower ones get 408 and are disconnected, so trickling "
            "clients cannot hold connections for ever. Heads over 64 KiB get 431."),
    Setting("agent_timeout", "HUTCH_AGENT_TIMEOUT", "15", _positive_float,
            "Seconds to wait for a new sandbox's agent to answer before the create fails."),
    Setting("template_ready_timeout", "HUTCH_TEMPLATE_READY_TIMEOUT", "60", _positive_float,
            "Seconds a template's ready command has to first succeed in a new sandbox; past "
            "them the create fails, saying so, and the sandbox is removed."),
    Setting("log_level", "HUTCH_LOG_LEVEL", "info", _log_level,
            "Server log level (debug, info, warning, error)."),
    Setting("event_loop", "HUTCH_EVENT_LOOP", "uvloop", _event_loop,
            "The server's event loop: `uvloop` (libuv; a command's round trip through the "
            "server about a third faster than the standard loop on a busy host) or `asyncio` "
            "(the standard library's). The in-sandbox agent always uses the standard one."),
    Setting("allow_degraded", "HUTCH_ALLOW_DEGRADED", "false", _bool,
            "Serve even when the start-up isolation self-test (see \"Isolation self-test\" "
            "in docs/operations.md) fails a check; every response then carries "
            "`Hutch-Degraded: <failed checks>` and GET /health lists them under `degraded`. "
            "Off: the server refuses to start."),
    Setting("selftest_fail", "HUTCH_SELFTEST_FAIL", "", _text,
            "For testing only: comma-separated self-test check names to report as failed."),
)


@dataclass(frozen=True)
class Config:
    data_dir: Path
    host: str
    port: int
    instance: str
    subnet: str
    templates_dir: Path
    oci_runtime: str
    agent_fork: bool
    uid_base: int
    insecure_registries: str
    registry_auth: str
    trust_host_cas: bool
    default_timeout: int
    max_timeout: int
    default_cpu: float
    default_memory_mb: int
    default_disk_mb: int
    default_pids: int
    max_cpu: float
    max_memory_mb: int
    max_disk_mb: int
    default_network: str
    egress_max_connections: int
    egress_rate_mbit: int
    egress_proxy_port: int
    public_ports: bool
    max_sandboxes: int
    tenant_max_sandboxes: int
    tenant_max_cpu: float
    tenant_max_memory_mb: int
    tenant_creates_per_minute: int
    pools: dict[str, int]
    audit_retention_days: float
    audit_keep: int
    domain: str
    http_head_timeout: float
    agent_timeout: float
    template_ready_timeout: float
    log_level: str
    event_loop: str
    allow_degraded: bool
    selftest_fail: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        return load(environ, **overrides)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hutch.db"

    @property
    def admin_key_path(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def state_dir(self) -> Path:
        """The runtime's own directory (bundles, writable layers, run dirs)."""
        return self.data_dir / "runtime"


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Resolve every setting once: ``overrides`` (e.g. CLI flags) > environment > default.

    Overrides go through the same checks as the environment's text."""
    env = os.environ if environ is None else environ
    unknown = set(overrides) - {s.field for s in SETTINGS}
    if unknown:
        raise TypeError(f"unknown settings {sorted(unknown)}")
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.env)
        source = s.env
        if overrides.get(s.field) is not None:
            raw, source = str(overrides[s.field]), f"--{s.field.replace('_', '-')}"
        elif raw is None or raw == "":
            raw, source = s.default, f"default of {s.env}"
        if raw == "" and s.default == "":
            values[s.field] = None
            continue
        try:
            values[s.field] = s.parse(raw)
        except ValueError as exc:
            why = str(exc)
            if why.startswith(("invalid literal", "could not convert")):
                why = "expected a number"
            raise ConfigError(f"invalid {source}={raw!r}: {why}") from None
    if values["templates_dir"] is None:
        values["templates_dir"] = Path(values["data_dir"]) / "templates"
    values["domain"] = values["domain"] or ""
    values["selftest_fail"] = values["selftest_fail"] or ""
    values["insecure_registries"] = values["insecure_registries"] or ""
    values["registry_auth"] = values["registry_auth"] or ""
    if values["max_cpu"] is None:
        values["max_cpu"] = float(os.cpu_count() or 1)
    for default, limit, env in (("default_cpu", "max_cpu", "HUTCH_MAX_CPU"),
                                ("default_memory_mb", "max_memory_mb", "HUTCH_MAX_MEMORY_MB"),
                                ("default_disk_mb", "max_disk_mb", "HUTCH_MAX_DISK_MB")):
        if values[default] > values[limit]:
            raise ConfigError(f"the default {default} ({values[default]}) exceeds "
                              f"{env}={values[limit]}")
    if values["default_timeout"] > values["max_timeout"]:
        raise ConfigError(
            f"HUTCH_DEFAULT_TIMEOUT={values['default_timeout']} exceeds "
            f"HUTCH_MAX_TIMEOUT={values['max_timeout']}"
        )
    return Config(**values)


def markdown_table() -> str:
    """The settings as a Markdown table, for docs/operations.md."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(unset)"
        rows.append(f"| `{s.env}` | {default} | {s.doc} |")
    return "\n".join(rows)
