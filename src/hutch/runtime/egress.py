"""A sandbox's egress policy and the nftables that enforce it, host side (domain rules act
through hutch's resolver too: dns.py).

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

Each change is one nftables transaction (libnftables in-process; the nft command where the
library is missing), chain, rules and map element together: there is no moment with half a
policy. The runtime also keeps each policy in the sandbox's directory so that a restarted
runtime, which rebuilds the instance table, writes them back in the same transaction as the
table (fail closed: never a window with the table and no policies).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

from hutch.errors import InvalidArgumentError

MAP = "egress"
# How the instance table's refusing chains refuse (firewall.py): TCP with a reset, everything
# else with ICMP "administratively prohibited". A connection a stricter policy cuts then ends
# at once on the sandbox's side too, instead of its socket retransmitting into the firewall for
# minutes (holding the sandbox's network namespace alive after it is gone).
REJECT = ("meta l4proto tcp reject with tcp reset", "reject with icmpx admin-prohibited")


_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def normalize_name(text: str) -> str | None:
    """A domain rule in canonical form (lower case, IDNA, no trailing dot; ``*.`` kept), or
    None when ``text`` is no domain name. Anything odd (NUL bytes, spaces, empty labels,
    ``*`` anywhere but a leading ``*.``) is no domain name."""
    name = text.strip().rstrip(".").lower()
    wildcard = name.startswith("*.")
    if wildcard:
        name = name[2:]
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = name.split(".")
    if not name or len(name) > 253 or len(labels) < 2 or any(
            not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-"
            or not set(label) <= _LABEL for label in labels):
        return None
    if labels[-1].isdigit():
        return None           # looks like an address, not a name
    return ("*." if wildcard else "") + name


def matches(rules: Sequence[str], name: str) -> bool:
    """Whether ``name`` (canonical, as the resolver sees it) is covered by a rule: exact
    names match themselves, ``*.example.com`` matches names below example.com (any depth) but
    not example.com itself."""
    name = name.rstrip(".").lower()
    for rule in rules:
        if rule.startswith("*."):
            if name.endswith(rule[1:]):
                return True
        elif name == rule:
            return True
    return False


def _split(entries: Iterable[str], what: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IPv4 networks, collapsed; domain rules, sorted) of a list of entries."""
    nets, names = [], set()
    for entry in entries:
        if not isinstance(entry, str) or not entry.strip():
            raise InvalidArgumentError(f"{what}: entries must be non-empty strings, got {entry!r}")
        text = entry.strip()
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            name = normalize_name(text)
            if name is None:
                raise InvalidArgumentError(
                    f"{what}: {text!r} is neither an IPv4 address, a CIDR block nor a domain "
                    "name (example.com, *.example.com)") from None
            names.add(name)
            continue
        if net.version != 4:
            raise InvalidArgumentError(
                f"{what}: {text!r} is IPv6; sandboxes have no IPv6 egress")
        nets.append(net)
    return (tuple(str(n) for n in ipaddress.collapse_addresses(nets)), tuple(sorted(names)))


@dataclass(frozen=True)
class EgressPolicy:
    internet: bool = True          # the verdict for destinations neither list names
    allow: tuple[str, ...] = ()    # IPv4 networks, collapsed
    deny: tuple[str, ...] = ()
    # Domain rules, enforced through hutch's resolver: names in ``deny_names`` do not resolve;
    # addresses it resolves for ``allow_names`` become reachable (for the answer's life, at
    # least an hour) unless they are always denied; with ``internet`` off, no other name
    # resolves at all (no exfiltration through DNS queries).
    allow_names: tuple[str, ...] = ()
    deny_names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, internet: bool = True, allow: Sequence[str] | None = None,
              deny: Sequence[str] | None = None) -> "EgressPolicy":
        """Validate and normalise; bad entries raise InvalidArgumentError naming them."""
        for name, value in (("allow_out", allow), ("deny_out", deny)):
            if value is not None and (isinstance(value, (str, bytes))
                                      or not isinstance(value, (list, tuple))):
                raise InvalidArgumentError(f"{name} must be a list of strings")
        allow_nets, allow_names = _split(allow or (), "allow_out")
        deny_nets, deny_names = _split(deny or (), "deny_out")
        return cls(internet=bool(internet), allow=allow_nets, deny=deny_nets,
                   allow_names=allow_names, deny_names=deny_names)

    @property
    def is_open(self) -> bool:
        """The default: everything the always-denied set lets through."""
        return self.internet and not (self.allow or self.deny or self.allow_names
                                      or self.deny_names)

    @property
    def closed(self) -> bool:
        """Nothing is reachable but what ``allow`` names: internet off, or E2B's way of
        saying so (``deny_out: ["0.0.0.0/0"]``)."""
        return not self.internet or "0.0.0.0/0" in self.deny

    @property
    def proxied(self) -> bool:
        """Whether its web connections go through the egress proxy (it has name rules)."""
        return bool(self.allow_names or self.deny_names)

    def name_verdict(self, name: str) -> str:
        """What the resolver does with a query for ``name``: ``learn`` (resolve, and let the
        sandbox reach the addresses), ``refuse`` or ``forward`` (resolve, nothing more). With
        nothing reachable but the allowed, other names do not resolve at all (no exfiltration
        through the queries themselves)."""
        if matches(self.allow_names, name):
            return "learn"
        if matches(self.deny_names, name) or self.closed:
            return "refuse"
        return "forward"

    def to_json(self) -> str:
        return json.dumps({"internet": self.internet, "allow": list(self.allow),
                           "deny": list(self.deny), "allow_names": list(self.allow_names),
                           "deny_names": list(self.deny_names)})

    @classmethod
    def from_json(cls, text: str) -> "EgressPolicy":
        data = json.loads(text)
        return cls(internet=bool(data["internet"]), allow=tuple(data["allow"]),
                   deny=tuple(data["deny"]), allow_names=tuple(data.get("allow_names", ())),
                   deny_names=tuple(data.get("deny_names", ())))


def chain(sandbox_id: str) -> str:
    return f"egress_{sandbox_id}"


def learned_set(sandbox_id: str) -> str:
    return f"names_{sandbox_id}"


#: How long an address learned from an answer stays reachable at least (answers often live
#: seconds; a download or a connection pool outlives that).
LEARNED_FOR = 3600


#: Chains of the instance table (firewall.py) a policy jumps to: they log the decision (when
#: the egress log is on) and then accept, or refuse (TCP with a reset, else ICMP).
ALLOWED, DENIED = "allowed", "denied"


def chain_rules(sandbox_id: str, policy: EgressPolicy) -> list[str]:
    rules = []
    if policy.allow_names:
        rules.append(f"ip daddr @{learned_set(sandbox_id)} jump {ALLOWED}")
    if policy.allow:
        rules.append(f"ip daddr {{ {', '.join(policy.allow)} }} jump {ALLOWED}")
    if policy.deny:
        rules.append(f"ip daddr {{ {', '.join(policy.deny)} }} jump {DENIED}")
    rules.append(f"jump {ALLOWED}" if policy.internet else f"jump {DENIED}")
    return rules


#: The map (in the nat table's prerouting) from sandbox address to the chain that sends its
#: web connections to the egress proxy (egress_proxy.py); only sandboxes with name rules.
PROXIED = "proxied"


def proxy_chain(sandbox_id: str) -> str:
    return f"proxy_{sandbox_id}"


def proxy_rules(policy: EgressPolicy, proxy_port: int) -> list[str]:
    """Connections to addresses the policy allows outright go direct; the rest to the proxy
    (always-denied destinations never get here: the firewall refuses them as before)."""
    rules = [f"ip daddr {{ {', '.join(policy.allow)} }} return"] if policy.allow else []
    return rules + [f"meta l4proto tcp redirect to :{proxy_port}"]


def _map(name: str, elements: list[str]) -> str:
    listed = f"        elements = {{ {', '.join(elements)} }}\n" if elements else ""
    return f"    map {name} {{\n        type ipv4_addr : verdict\n{listed}    }}\n"


def _chain(name: str, rules: list[str]) -> str:
    body = "".join(f"        {rule}\n" for rule in rules)
    return f"    chain {name} {{\n{body}    }}\n"


def declarations(entries: Iterable[tuple[str, str, EgressPolicy]], proxy_port: int) -> str:
    """The maps, sets and chains of ``(sandbox id, address, policy)``, as the body of the
    instance table (used when the table is (re)built; learned addresses start empty)."""
    chains, elements, proxied = [], [], []
    for sandbox_id, address, policy in entries:
        if policy.is_open:
            continue
        if policy.allow_names:
            chains.append(f"    set {learned_set(sandbox_id)} {{\n        type ipv4_addr\n"
                          "        flags timeout\n    }\n")
        chains.append(_chain(chain(sandbox_id), chain_rules(sandbox_id, policy)))
        elements.append(f"{address} : jump {chain(sandbox_id)}")
        if policy.proxied:
            chains.append(_chain(proxy_chain(sandbox_id), proxy_rules(policy, proxy_port)))
            proxied.append(f"{address} : jump {proxy_chain(sandbox_id)}")
    return _map(MAP, elements) + _map(PROXIED, proxied) + "".join(chains)


def apply_script(instance: str, sandbox_id: str, address: str, policy: EgressPolicy,
                 proxy_port: int) -> str:
    """One transaction that puts ``policy`` in force for the sandbox at ``address``
    (removing its chains and set when the policy is the open default). Learned addresses are
    forgotten: the names they came from may no longer be allowed.

    Every object is first made to exist (add is idempotent) so that the deletes that follow
    cannot fail, whatever the previous policy had."""
    t, c, n = f"inet {instance}", chain(sandbox_id), learned_set(sandbox_id)
    p = proxy_chain(sandbox_id)
    make_set = f"add set {t} {n} {{ type ipv4_addr; flags timeout; }}"
    lines = [f"add chain {t} {c}", f"flush chain {t} {c}",
             f"add element {t} {MAP} {{ {address} : jump {c} }}",
             f"add chain {t} {p}", f"flush chain {t} {p}",
             f"add element {t} {PROXIED} {{ {address} : jump {p} }}"]
    if not policy.proxied:
        lines += [f"delete element {t} {PROXIED} {{ {address} }}", f"delete chain {t} {p}"]
    else:
        lines += [f"add rule {t} {p} {rule}" for rule in proxy_rules(policy, proxy_port)]
    if policy.is_open:
        lines += [f"delete element {t} {MAP} {{ {address} }}", f"delete chain {t} {c}",
                  make_set, f"delete set {t} {n}"]
        return "\n".join(lines) + "\n"
    if policy.allow_names:
        lines += [make_set, f"flush set {t} {n}"]
    else:
        lines += [make_set, f"delete set {t} {n}"]
    lines += [f"add rule {t} {c} {rule}" for rule in chain_rules(sandbox_id, policy)]
    return "\n".join(lines) + "\n"


def learn_script(instance: str, sandbox_id: str, addresses: Iterable[str],
                 seconds: int) -> str:
    """Make ``addresses`` reachable for ``seconds`` (an existing element's time restarts)."""
    t, n = f"inet {instance}", learned_set(sandbox_id)
    items = ", ".join(f"{a} timeout {seconds}s" for a in addresses)
    bare = ", ".join(addresses)
    return (f"add element {t} {n} {{ {bare} }}\ndelete element {t} {n} {{ {bare} }}\n"
            f"add element {t} {n} {{ {items} }}\n")


def remove_script(instance: str, sandbox_id: str, address: str) -> str:
    """One transaction that removes the sandbox's chains, set and map elements, if any."""
    return apply_script(instance, sandbox_id, address, EgressPolicy(), 0)
