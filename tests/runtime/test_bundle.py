"""Golden-file tests of the pure parts: the OCI config pieces, the seccomp profile, the
firewall ruleset, the network commands. Regenerate with HUTCH_UPDATE_GOLDEN=1 after a
deliberate change, then review the diff."""

from __future__ import annotations

import dataclasses

import ipaddress
import json
import os
import random
from pathlib import Path

import pytest

from hutch.runtime import bundle, egress, firewall, netlink, network, seccomp
from hutch.runtime.egress import EgressPolicy
from hutch.runtime.spec import Mount, SandboxSpec

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("HUTCH_UPDATE_GOLDEN") == "1"

SPEC = SandboxSpec(
    id="abc123", layers=(Path("/t/layers/2"), Path("/t/layers/1")),
    args=("/usr/bin/agent", "--serve"), env=(("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")),
    cwd="/home/user", hostname="box", cpu=1.5, memory_mb=512, pids=256, disk_mb=1024,
    network="internet", mounts=(Mount(Path("/srv/data"), "/data", read_only=True),
                                Mount(Path("/srv/out"), "/out", read_only=False)))
WHERE = bundle.Placement(
    rootfs=Path("/s/sandboxes/abc123/rootfs"), run_dir=Path("/s/sandboxes/abc123/run"),
    init=Path("/usr/bin/tini-static"), sysfs=Path("/s/sandboxes/abc123/sys"),
    netns=Path("/run/netns/hutch-abc123"), cgroups_path="/hutch/abc123",
    uid_base=100000, uid_count=65536, nofile=1048576,
    extra_masked=("/sys/devices/system/cpu/cpu0/thermal_throttle",))
FACTS = firewall.FirewallFacts("hutch", "10.11.0.0/16", "eth0",
                               ("192.0.2.2/32",), ("192.0.2.0/24",))


def check(name: str, value) -> None:
    text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / name
    if UPDATE or not path.exists():
        if not UPDATE:
            pytest.fail(f"golden file {name} missing (run with HUTCH_UPDATE_GOLDEN=1)")
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("name,make", [
    ("namespaces.json", lambda: bundle.namespaces(WHERE.netns)),
    ("id_mappings.json", lambda: bundle.id_mappings(100000, 65536)),
    ("mounts.json", lambda: bundle.mounts(WHERE.run_dir, WHERE.init, WHERE.sysfs, SPEC.mounts)),
    ("resources.json", lambda: bundle.resources(SPEC)),
    ("rlimits.json", lambda: bundle.rlimits(1048576)),
    ("capabilities.json", bundle.capabilities),
    ("process.json", lambda: bundle.process(SPEC, 1048576)),
    ("config.json", lambda: json.loads(bundle.render(bundle.config(SPEC, WHERE), "{}"))),
    ("etc_files.json", lambda: bundle.etc_files(SPEC, "10.11.0.7", "10.11.0.1")),
    ("etc_files_none.json", lambda: bundle.etc_files(SPEC, None, None)),
    ("seccomp_x86_64.json", lambda: seccomp.profile("SCMP_ARCH_X86_64")),
    ("firewall.nft", lambda: firewall.ruleset(FACTS)),
    ("firewall_egress.nft", lambda: firewall.ruleset(FACTS, [
        ("abc", "10.11.0.7", EgressPolicy.parse(True, ["198.51.100.7"], ["198.51.100.0/24"])),
        ("def", "10.11.0.8", EgressPolicy.parse(False, ["203.0.113.0/25", "203.0.113.128/25"])),
        ("open", "10.11.0.9", EgressPolicy()),
        ("names", "10.11.0.10", EgressPolicy.parse(True, ["pypi.org", "198.51.100.0/24"],
                                                   ["*.example.com"]))])),
    ("firewall_caps.nft", lambda: firewall.ruleset(
        dataclasses.replace(FACTS, max_connections=512, rate_bytes=125_000_000))),
    ("egress_update.nft", lambda: egress.apply_script(
        "hutch", "abc", "10.11.0.7", EgressPolicy.parse(False, ["198.51.100.7"]), 15001)
     + egress.apply_script("hutch", "abc", "10.11.0.7",
                           EgressPolicy.parse(False, ["pypi.org", "198.51.100.7"]), 15001)
     + egress.remove_script("hutch", "abc", "10.11.0.7")),
    ("veth_request.hex", lambda: netlink.veth_request("v6e43abcdef0123", "eth0", 7, 42).hex()
     + "\n"),
    ("bridge.txt", lambda: "\n".join(network.bridge_commands("hutch", "10.11.0.0/16")) + "\n"),
])
def test_golden(name, make):
    check(name, make())


def test_render_splices_the_profile_once():
    text = bundle.render(bundle.config(SPEC, WHERE))
    cfg = json.loads(text)
    assert cfg["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"
    assert cfg["linux"]["seccomp"]["architectures"] == [seccomp.native_arch()]
    assert seccomp.profile_json() is seccomp.profile_json()  # serialized once per process


def test_only_a_self_confining_process_gets_sys_admin_and_only_in_its_bounding_set():
    plain = bundle.process(SPEC, 1024)["capabilities"]
    assert all("CAP_SYS_ADMIN" not in caps for caps in plain.values())
    confining = bundle.process(dataclasses.replace(SPEC, landlock=True), 1024)["capabilities"]
    assert confining["bounding"] == plain["bounding"] + ["CAP_SYS_ADMIN"]
    assert confining["effective"] == plain["effective"] == confining["permitted"]


def test_denied_syscalls_are_never_allowed():
    prof = seccomp.profile()
    allowed = {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert not allowed & set(seccomp.DENIED)
    assert {"io_uring_setup", "bpf", "keyctl", "unshare", "setns", "fsopen", "mount",
            "userfaultfd", "perf_event_open", "kexec_load", "init_module"} <= set(seccomp.DENIED)


def test_ioctl_patterns_cover_everything_but_the_denied_commands():
    patterns = seccomp.complement_patterns(seccomp.DENIED_IOCTLS)
    rng = random.Random(7)
    values = [rng.getrandbits(32) for _ in range(20000)] + [0, 0xFFFFFFFF, 0x5401, 0x5413,
                                                            0x541B, 0x541D]
    for v in values + list(seccomp.DENIED_IOCTLS):
        assert any(v & m == val for m, val in patterns) == (v not in seccomp.DENIED_IOCTLS)


def test_denied_set_is_collapsed_and_complete():
    denied = [ipaddress.ip_network(n) for n in firewall.denied_set(FACTS)]
    for net in ("10.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "0.0.0.0/8",
                "172.16.0.0/12", "192.168.0.0/16", "192.0.2.0/24", "224.0.0.0/4",
                "240.0.0.0/4", "10.11.0.0/16", "192.0.2.2/32"):
        assert any(ipaddress.ip_network(net).subnet_of(d) for d in denied), net
    assert not any(a.overlaps(b) for a in denied for b in denied if a != b)
    assert not any(ipaddress.ip_network("198.51.100.0/24").overlaps(d) for d in denied)


def test_host_ifnames_are_short_stable_and_prefixed():
    a = network.host_ifname("hutch", "abc123")
    assert a == network.host_ifname("hutch", "abc123")
    assert len(a) <= 15 and a.startswith(network.veth_prefix("hutch"))
    assert a != network.host_ifname("hutch", "abc124")
    assert network.veth_prefix("hutch") != network.veth_prefix("hutchr")
