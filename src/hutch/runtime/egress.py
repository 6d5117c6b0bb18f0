"""A sandbox's egress policy and the nftables that enforce it, host side.

The policy decides, for a destination the always-denied set lets through (see firewall.py;
that set wins whatever a policy says), in this order: a destination in ``allow`` is accepted,
one in ``deny`` is rejected, anything else follows ``internet`` (accepted, or rejected). This
is E2B's order: ``allow_out`` takes precedence over ``deny_out``, so ``deny=0.0.0.0/0`` with a
short ``allow`` list is an allow-list.

Enforcement: the instance table has a map from sandbox address to a verdict. A sandbox with a
policy other than the open default gets a chain of its own (named by its id) and an element
in that map that jumps to it; the forward chain consults the map for every packet a sandbox
sends, established connections included, so a stricter policy cuts connections it no longer
allows. Sandboxes with the default policy have no element and cost nothing.

Each change is one ``nft -f`` transaction (chain, rules and map element together): there is
no moment with half a policy. The runtime also keeps each policy in the sandbox's directory so
that a restarted runtime, which rebuilds the instance table, writes them back in the same
transaction as the table (fail closed: never a window with the table and no policies).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from hutch.errors import InvalidArgumentError

MAP = "egress"
# TCP is refused with a reset, everything else with ICMP "administratively prohibited": a
# connection a stricter policy cuts then ends at once on the sandbox's side too, instead of
# its socket retransmitting into the firewall for minutes (holding the sandbox's network
# namespace alive after it is gone).
REJECT = ("meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited")


def _networks(entries: Iterable[str], what: str) -> tuple[str, ...]:
    nets = []
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidArgumentError(f"{what}: entries must be non-empty strings, got {entry!r}")
        text = entry.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise InvalidArgumentError(
                f"{what}: {text!r} is not an IPv4 address or CIDR block (domain names are not "
                "supported yet)") from None
        if net.version != 4:
            raise InvalidArgumentError(
                f"{what}: {text!r} is IPv6; sandboxes have no IPv6 egress")
        nets.append(net)
    return tuple(str(n) for n in ipaddress.collapse_addresses(nets))


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool = True          # the verdict for destinations neither list names
    allow: tuple[str, ...] = ()    # IPv4 networks, collapsed
    deny: tuple[str, ...] = ()

    @classmethod
    def parse(cls, internet: bool = True, allow: Sequence[str] | None = None,
              deny: Sequence[str] | None = None) -> "EgressPolicy":
        """Validate and normalise; bad entries raise InvalidArgumentError naming them."""
        for name, value in (("allow_out", allow), ("deny_out", deny)):
            if value is not None and (isinstance(value, (str, bytes))
                                      or not isinstance(value, (list, tuple))):
                raise InvalidArgumentError(f"{name} must be a list of strings")
        return cls(internet=bool(internet), allow=_networks(allow or (), "allow_out"),
                   deny=_networks(deny or (), "deny_out"))

    @property
    def is_open(self) -> bool:
        """The default: everything the always-denied set lets through."""
        return self.internet and not self.allow and not self.deny

    def to_json(self) -> str:
        return json.dumps({"internet": self.internet, "allow": list(self.allow),
                           "deny": list(self.deny)})

    @classmethod
    def from_json(cls, text: str) -> "EgressPolicy":
        data = json.loads(text)
        return cls(internet=bool(data["internet"]), allow=tuple(data["allow"]),
                   deny=tuple(data["deny"]))


def chain(sandbox_id: str) -> str:
    return f"egress_{sandbox_id}"


def chain_rules(policy: EgressPolicy) -> list[str]:
    rules = []
    if policy.allow:
        rules.append(f"ip daddr {{ {', '.join(policy.allow)} }} accept")
    if policy.deny:
        rules += [f"ip daddr {{ {', '.join(policy.deny)} }} {verdict}" for verdict in REJECT]
    rules += ["accept"] if policy.internet else list(REJECT)
    return rules


def declarations(entries: Iterable[tuple[str, str, EgressPolicy]]) -> str:
    """The map and the chains of ``(sandbox id, address, policy)``, as the body of the
    instance table (used when the table is (re)built)."""
    chains, elements = [], []
    for sandbox_id, address, policy in entries:
        if policy.is_open:
            continue
        body = "".join(f"        {rule}\n" for rule in chain_rules(policy))
        chains.append(f"    chain {chain(sandbox_id)} {{\n{body}    }}\n")
        elements.append(f"{address} : jump {chain(sandbox_id)}")
    listed = f"        elements = {{ {', '.join(elements)} }}\n" if elements else ""
    return (f"    map {MAP} {{\n        type ipv4_addr : verdict\n{listed}    }}\n"
            + "".join(chains))


def apply_script(instance: str, sandbox_id: str, address: str, policy: EgressPolicy) -> str:
    """One transaction that puts ``policy`` in force for the sandbox at ``address``
    (removing its chain when the policy is the open default)."""
    t, c = f"inet {instance}", chain(sandbox_id)
    lines = [f"add chain {t} {c}", f"flush chain {t} {c}",
             f"add element {t} {MAP} {{ {address} : jump {c} }}"]
    if policy.is_open:
        lines += [f"delete element {t} {MAP} {{ {address} }}", f"delete chain {t} {c}"]
    else:
        lines += [f"add rule {t} {c} {rule}" for rule in chain_rules(policy)]
    return "\n".join(lines) + "\n"


def remove_script(instance: str, sandbox_id: str, address: str) -> str:
    """One transaction that removes the sandbox's chain and map element, if any."""
    return apply_script(instance, sandbox_id, address, EgressPolicy())
