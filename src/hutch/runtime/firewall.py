"""The host-side firewall of an instance: one nftables table, outside every sandbox.

It is written as one ruleset text (a pure function of the instance's facts) and applied in
one atomic nftables transaction (libnftables in-process; the nft command where the library is
missing: nftables.py) that replaces the previous version, so there is never a moment with half
the rules. Everything keys on the instance's bridge, so no per-sandbox rule is needed and
creating a sandbox touches no firewall state.

What it enforces, for traffic that enters from the bridge (i.e. from sandboxes):
- prerouting (filter): the per-sandbox cap on concurrent connections.
- forward: IPv6 dropped; the per-sandbox bandwidth cap; then
  each sandbox's egress policy, if it has one (egress.py); destinations in the always-denied set (private, carrier-NAT,
  loopback, link-local/cloud metadata, "this network", benchmarking, multicast, reserved,
  the host's own addresses and every subnet the host is directly connected to, and the
  sandbox subnet itself) rejected; traffic from outside to sandboxes dropped unless it
  belongs to a connection a sandbox opened.
- input (to the host itself): only DNS to the gateway's forwarder and replies to
  connections the host opened; everything else dropped.
- bridge: frames one sandbox sends through the bridge to another port are dropped (the
  ports are also isolated; frames to the gateway itself are not forwarded, so unaffected).
- prerouting (nat): for sandboxes whose policy has name rules, TCP to the proxied ports
  (80, 443) is redirected to the egress proxy on the gateway (see egress_proxy.py), unless the
  destination is always denied (refused in forward) or allowed outright by address. Such
  connections reach the host (input); the proxy holds them to the bandwidth cap itself.
- postrouting: MASQUERADE of the sandbox subnet out of the default-route interface.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

from typing import Iterable

from hutch.runtime import command, egress, nftables
from hutch.runtime.egress import EgressPolicy
from hutch.runtime.network import veth_prefix

ALWAYS_DENIED: tuple[str, ...] = (
    "0.0.0.0/8",        # "this network"
    "10.0.0.0/8",       # RFC 1918
    "100.64.0.0/10",    # carrier-grade NAT
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local, cloud metadata
    "172.16.0.0/12",    # RFC 1918
    "192.0.0.0/24",     # IETF protocol assignments
    "192.168.0.0/16",   # RFC 1918
    "198.18.0.0/15",    # benchmarking
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, broadcast
)


@dataclass(frozen=True)
class FirewallFacts:
    instance: str
    subnet: str
    uplink: str | None                      # default-route interface (MASQUERADE out of it)
    host_addresses: tuple[str, ...] = ()    # the host's own IPv4 addresses
    host_subnets: tuple[str, ...] = field(default_factory=tuple)  # directly connected
    # Per-sandbox caps so that one sandbox cannot starve the others (0: none): concurrent
    # connections it opens, and bytes per second each way through the bridge.
    max_connections: int = 0
    rate_bytes: int = 0
    # NFLOG group the decisions are logged to (the egress log; 0: not logged).
    log_group: int = 0
    # Where the egress proxy listens on the gateway (egress_proxy.py), and the ports whose
    # connections are sent to it for sandboxes with name rules.
    proxy_port: int = 15001
    proxy_ports: tuple[int, ...] = (80, 443)


def denied_set(facts: FirewallFacts) -> list[str]:
    """The always-denied destinations, collapsed (nft rejects overlapping interval elements)."""
    nets = [ipaddress.ip_network(n) for n in ALWAYS_DENIED]
    nets += [ipaddress.ip_network(facts.subnet)]
    nets += [ipaddress.ip_network(a) for a in facts.host_addresses]
    nets += [ipaddress.ip_network(s, strict=False) for s in facts.host_subnets]
    return [str(n) for n in ipaddress.collapse_addresses(n for n in nets if n.version == 4)]


def ruleset(facts: FirewallFacts, policies: Iterable[tuple[str, str, EgressPolicy]] = ()) -> str:
    """The nft script that (re)creates the instance's tables atomically, with the egress
    policies of the sandboxes that exist (``(id, address, policy)``) in the same transaction."""
    t = facts.instance
    br = f"{t}0"
    veths = veth_prefix(t)
    gw = str(next(ipaddress.ip_network(facts.subnet).hosts()))
    denied = ", ".join(denied_set(facts))
    masquerade = (f'        ip saddr {facts.subnet} oifname "{facts.uplink}" masquerade\n'
                  if facts.uplink else "")
    def note(reason: str, new_only: bool = False) -> str:
        """The rule that logs a decision to the egress log (refusals rate limited)."""
        if not facts.log_group:
            return ""
        when = "ct state new " if new_only else "limit rate 100/second burst 100 packets "
        return (f"        {when}log group {facts.log_group} snaplen 64 "
                f'prefix "{reason}"\n')

    refuse = "".join(f"        {verdict}\n" for verdict in egress.REJECT)
    proxy_ports = ", ".join(str(p) for p in facts.proxy_ports)
    sets = (f"    chain {egress.ALLOWED} {{\n{note('a:policy', True)}        accept\n    }}\n"
            f"    chain {egress.DENIED} {{\n{note('d:policy')}{refuse}    }}\n"
            f"    chain private {{\n{note('d:private')}"
            "        reject with icmpx admin-prohibited\n    }\n")
    limits = admit = ""
    if facts.max_connections:
        # Counted once per connection, where every one passes (prerouting, before the proxy's
        # redirect: refused there, the reset comes from the address the sandbox dialled, as
        # it must for the sandbox to take it). DNS to the gateway is not a connection.
        sets += ("    set conns {\n        type ipv4_addr\n        size 65535\n"
                 "        flags dynamic\n    }\n"
                 f"    chain refuse {{\n{note('d:connections')}{refuse}    }}\n")
        admit = (f"    chain admit {{\n        type filter hook prerouting priority dstnat - 20; "
                 f'policy accept;\n        iifname "{br}" ip daddr != {gw} ct state new '
                 f"add @conns {{ ip saddr ct count over {facts.max_connections} }} "
                 "jump refuse\n    }\n")
    if facts.rate_bytes:
        for name in ("rate_out", "rate_in"):
            sets += (f"    set {name} {{\n        type ipv4_addr\n        size 65535\n"
                     "        flags dynamic,timeout\n        timeout 1m\n    }\n")
        rate = f"limit rate over {facts.rate_bytes} bytes/second burst {facts.rate_bytes} bytes"
        limits += (f'        iifname "{br}" update @rate_out {{ ip saddr {rate} }} drop\n'
                   f'        oifname "{br}" update @rate_in {{ ip daddr {rate} }} drop\n')
    opened = (f'        iifname "{br}" ct state new log group {facts.log_group} snaplen 64 '
              'prefix "a:open"\n') if facts.log_group else ""
    return f"""table inet {t} {{}}
delete table inet {t}
table bridge {t} {{}}
delete table bridge {t}
table inet {t} {{
    set denied {{
        type ipv4_addr
        flags interval
        elements = {{ {denied} }}
    }}
{egress.declarations(policies, facts.proxy_port)}{sets}    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{br}" meta nfproto ipv6 drop
        iifname "{br}" ip daddr @denied jump private
{limits}        iifname "{br}" ip saddr vmap @{egress.MAP}
{opened}        iifname "{br}" oifname "{br}" drop
        oifname "{br}" ct state established,related accept
        oifname "{br}" drop
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{br}" ct state established,related accept
        iifname "{br}" ip daddr {gw} udp dport 53 accept
        iifname "{br}" ip daddr {gw} tcp dport 53 accept
        iifname "{br}" ip daddr {gw} tcp dport {facts.proxy_port} ct status dnat accept
        iifname "{br}" drop
    }}
{admit}    chain prerouting {{
        type nat hook prerouting priority dstnat - 10; policy accept;
        iifname "{br}" ip daddr @denied return
        iifname "{br}" tcp dport {{ {proxy_ports} }} ip saddr vmap @{egress.PROXIED}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{masquerade}    }}
}}
table bridge {t} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{veths}*" drop
    }}
}}
"""


def delete_script(instance: str) -> str:
    return (f"table inet {instance} {{}}\ndelete table inet {instance}\n"
            f"table bridge {instance} {{}}\ndelete table bridge {instance}\n")


async def nft(script: str) -> None:
    """Apply ``script`` as one transaction; RuntimeError_ with nft's message if it fails."""
    await nftables.backend().run(script)


async def host_facts(exclude_ifname: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The host's own IPv4 addresses and directly connected subnets (except the bridge's)."""
    done = await command.run(["ip", "-j", "-4", "addr", "show"], stdout=command.PIPE,
                             stderr=command.DEVNULL)
    addrs, subnets = [], []
    for link in json.loads(done.stdout or b"[]"):
        if link.get("ifname") == exclude_ifname:
            continue
        for a in link.get("addr_info", []):
            if a.get("family") != "inet":
                continue
            addrs.append(f"{a['local']}/32")
            subnets.append(str(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}",
                                                    strict=False)))
    return tuple(addrs), tuple(subnets)
