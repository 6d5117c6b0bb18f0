"""What a sandbox may reach: E2B's ``allow_internet_access`` and ``network`` fields, read,
checked and turned into the runtime's :class:`EgressPolicy`.

The stored form (``SandboxRecord.egress``) is the normalised request: ``{"internet": bool,
"allowOut": [...], "denyOut": [...], "allowPublicTraffic": bool}``, or None for the default
(internet on, nothing listed, ports public: only when the server makes ports public by
default, HUTCH_PUBLIC_PORTS; otherwise every record says ``allowPublicTraffic: false`` and a
sandbox's ports answer only requests with its traffic token). Entries are IPv4 addresses, CIDR blocks and
domain names (``example.com``, ``*.example.com``). E2B's order applies: ``allowOut`` wins
over ``denyOut``, and what neither names follows ``internet``. Whatever the policy, the
runtime's always-denied set (private ranges, metadata, the host) stays denied. Domain rules
act through hutch's resolver (runtime/dns.py): with internet off, only allowed names resolve.

Fields of E2B's network object that this server does not implement are refused by name
rather than ignored: a policy that is silently weaker than asked for is worse than an error.
"""

from __future__ import annotations

from typing import Any

from hutch.errors import InvalidArgumentError
from hutch.runtime.egress import EgressPolicy

_UNSUPPORTED = ("rules", "egressProxy", "egress_proxy", "maskRequestHost", "mask_request_host",
                "httpsPorts", "https_ports", "dnsServers", "dns_servers")


def _field(body: dict, camel: str, snake: str) -> Any:
    return body.get(camel, body.get(snake))


def _flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a boolean")
    return value


def default(public_ports: bool) -> dict | None:
    """The stored form for a create that says nothing about its network."""
    return stored(EgressPolicy(), public_ports)


def parse(network: Any, internet: bool | None,
          public_ports: bool = False) -> tuple[str, dict | None]:
    """The network mode (``internet`` or ``none``) and the stored egress form for a create
    with E2B's ``network`` object and ``allow_internet_access`` flag."""
    if network is None:
        network = {}
    if not isinstance(network, dict):
        raise InvalidArgumentError("network must be an object")
    for name in _UNSUPPORTED:
        if network.get(name) is not None:
            raise InvalidArgumentError(f"network.{name} is not supported by this server")
    allow = _field(network, "allowOut", "allow_out")
    deny = _field(network, "denyOut", "deny_out")
    public = _flag(_field(network, "allowPublicTraffic", "allow_public_traffic"),
                   "network.allowPublicTraffic", public_ports)
    policy = EgressPolicy.parse(True if internet is None else internet, allow, deny)
    if not policy.internet and not policy.allow and not policy.allow_names:
        # Nothing is reachable: no network at all (no interface inside, nothing to police).
        return "none", stored(policy, public)
    return "internet", stored(policy, public)


def update(body: Any, current: dict | None, mode: str) -> dict | None:
    """The stored egress form after E2B's ``PUT /sandboxes/{id}/network``, which replaces the
    whole egress configuration (fields left out are cleared); whether the sandbox's ports are
    public was set at create and stays."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    if mode != "internet":
        raise InvalidArgumentError("this sandbox was created without a network (network "
                                   "mode 'none'); its egress cannot be changed")
    for name in _UNSUPPORTED:
        if body.get(name) is not None:
            raise InvalidArgumentError(f"{name} is not supported by this server")
    # Left out means cleared, back to the default, like every other field of the update.
    internet = _flag(_field(body, "allowInternetAccess", "allow_internet_access"),
                     "allow_internet_access", True)
    policy = EgressPolicy.parse(internet, _field(body, "allowOut", "allow_out"),
                                _field(body, "denyOut", "deny_out"))
    return stored(policy, public_of(current))


def stored(policy: EgressPolicy, public: bool = True) -> dict | None:
    if policy.is_open and public:
        return None
    return {"internet": policy.internet,
            "allowOut": list(policy.allow) + list(policy.allow_names),
            "denyOut": list(policy.deny) + list(policy.deny_names), "allowPublicTraffic": public}


def policy_of(egress: dict | None) -> EgressPolicy:
    if not egress:
        return EgressPolicy()
    return EgressPolicy.parse(bool(egress["internet"]), egress["allowOut"], egress["denyOut"])


def internet_of(egress: dict | None) -> bool:
    return True if not egress else bool(egress["internet"])


def public_of(egress: dict | None) -> bool:
    return True if not egress else bool(egress.get("allowPublicTraffic", True))


def describe(egress: dict | None) -> dict:
    """The ``network`` object of a sandbox's details, E2B's shape."""
    return {"allowOut": list(egress["allowOut"]) if egress else [],
            "denyOut": list(egress["denyOut"]) if egress else [],
            "allowPublicTraffic": public_of(egress)}


def explicitly_private(network: Any) -> bool:
    return isinstance(network, dict) and _field(
        network, "allowPublicTraffic", "allow_public_traffic") is False
