"""The isolation self-test's parsing and judging, on inputs taken from a real probe sandbox
(and altered the way a broken host would show them). No root needed."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

from hutch.runtime import bundle
from hutch.server import selftest

# /proc/<pid>/status of a probe process inside (root, default capability set), trimmed.
INSIDE_STATUS = """Name:\tpython3
Umask:\t0022
State:\tR (running)
Tgid:\t7
Pid:\t7
PPid:\t6
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
NSpid:\t7
CapInh:\t0000000000000000
CapPrm:\t00000000a80425fb
CapEff:\t00000000a80425fb
CapBnd:\t00000000a80425fb
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t2
Seccomp_filters:\t1
Speculation_Store_Bypass:\tthread vulnerable
"""
# The sandbox's init as the host sees it.
INIT_STATUS = INSIDE_STATUS.replace("python3", ".hutch-init").replace(
    "Uid:\t0\t0\t0\t0", "Uid:\t100000\t100000\t100000\t100000").replace(
    "NSpid:\t7", "NSpid:\t20512\t1")
UID_MAP = "         0     100000      65536\n"
CGROUP_V1 = ("9:name=systemd:/hutchs/selftestf4702abee761\n8:pids:/hutchs/selftestf4702abee761\n"
             "4:memory:/hutchs/selftestf4702abee761\n1:cpu:/hutchs/selftestf4702abee761\n"
             "0::/hutchs/selftestf4702abee761\n")
CGROUP_V2 = "0::/hutchs/selftestf4702abee761\n"
MOUNTS = ("overlay / overlay rw,nodev,relatime,lowerdir=/var/lib/hutch/templates/base/dc61/"
          "rootfs,upperdir=/var/lib/hutch/runtime/sandboxes/x/disk/upper,workdir=/var/lib/"
          "hutch/runtime/sandboxes/x/disk/work,uuid=on 0 0\n"
          "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
          "proc /proc/sys proc ro,nosuid,nodev,noexec,relatime 0 0\n")
NFT_DENIED = """table inet hutchs {
\tset denied {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 0.0.0.0/8, 10.0.0.0/8,
\t\t\t     100.64.0.0/10, 127.0.0.0/8,
\t\t\t     169.254.0.0/16, 172.16.0.0/12,
\t\t\t     192.0.0.0/24, 192.0.2.0/24,
\t\t\t     192.168.0.0/16, 198.18.0.0/15,
\t\t\t     224.0.0.0/3 }
\t}
}
"""
INSIDE = {
    "uid_map": UID_MAP, "status": INSIDE_STATUS, "mounts": MOUNTS,
    "masked": {"/proc/kcore": {"errno": 2}, "/proc/keys": 0, "/proc/timer_list": 0},
    "proc_sys_rdonly": True, "proc_sys_write": errno.EACCES, "root_bytes": 2107482112,
    "keyctl": errno.EPERM, "unshare": errno.EPERM, "leaked_fd": {"errno": errno.EACCES},
}
HOST = {"status": INIT_STATUS, "uid_map": UID_MAP, "user_ns": "user:[4026532256]",
        "host_ns": "user:[4026531837]", "memory.max": "1073741824\n", "pids.max": "1024\n",
        "landlock_abi": 7}


def _judge(inside=None, host=None, **kw):
    args = dict(expected_caps=bundle.CAPABILITIES, no_new_privs=False,
                memory_bytes=1024 << 20, pids=1024, disk_mb=2048)
    args.update(kw)
    return {c.name: c for c in selftest.judge({**INSIDE, **(inside or {})},
                                              {**HOST, **(host or {})}, **args)}


def test_a_healthy_probe_passes_every_check_in_order():
    checks = _judge()
    assert [c for c in checks.values() if not c.ok] == []
    assert list(checks) == [n for n in selftest.NAMES
                            if n not in ("probe_sandbox", "firewall_table")]
    assert checks["uid_map"].detail == "0 -> 100000 (range of 65536)"


def test_parsers():
    status = selftest.parse_status(INIT_STATUS)
    assert status["Uid"] == "100000\t100000\t100000\t100000"
    assert status["Seccomp"] == "2"
    assert selftest.parse_id_map(UID_MAP) == [(0, 100000, 65536)]
    assert selftest.parse_cgroup(CGROUP_V2) == "/hutchs/selftestf4702abee761"
    assert selftest.parse_cgroup(CGROUP_V1, "memory") == "/hutchs/selftestf4702abee761"
    assert selftest.parse_cgroup(CGROUP_V1, "pids") == "/hutchs/selftestf4702abee761"
    assert selftest.parse_cgroup("4:memory:/x\n", "pids") is None
    assert selftest.root_fstype(MOUNTS) == "overlay"


def test_capability_names_round_trip():
    mask = selftest.cap_mask(bundle.CAPABILITIES)
    assert mask == 0xa80425fb            # what a default sandbox's root really holds
    assert sorted(selftest.cap_names(mask)) == sorted(bundle.CAPABILITIES)


def test_root_mapped_to_host_root_fails():
    c = _judge(host={"uid_map": "         0          0 4294967295\n"})["uid_map"]
    assert not c.ok and "host root" in c.detail
    c = _judge(inside={"uid_map": ""})["uid_map"]
    assert not c.ok and "empty or unreadable uid_map (inside)" in c.detail
    c = _judge(host={"uid_map": "0 100000 1000\n1000 0 1\n"})["uid_map"]
    assert not c.ok and "maps to host root" in c.detail


def test_init_running_as_host_root_fails():
    status = INIT_STATUS.replace("Uid:\t100000\t100000\t100000\t100000", "Uid:\t0\t0\t0\t0")
    c = _judge(host={"status": status})["host_uid"]
    assert not c.ok and "host uid 0" in c.detail


def test_host_user_namespace_fails():
    c = _judge(host={"user_ns": "user:[4026531837]"})["user_namespace"]
    assert not c.ok and "host's user namespace" in c.detail


def test_extra_capabilities_are_named():
    status = INSIDE_STATUS.replace("CapEff:\t00000000a80425fb", "CapEff:\t00000000a82425fb")
    c = _judge(inside={"status": status})["capabilities"]
    assert not c.ok and c.detail.endswith("CAP_SYS_ADMIN")
    full = INIT_STATUS.replace("CapBnd:\t00000000a80425fb", "CapBnd:\t000001ffffffffff")
    c = _judge(host={"status": full})["capabilities"]
    assert not c.ok and "CAP_SYS_MODULE" in c.detail and "CAP_BPF" in c.detail
    # fewer than configured is fine (a process that dropped some)
    fewer = INSIDE_STATUS.replace("CapEff:\t00000000a80425fb", "CapEff:\t0000000000000000")
    assert _judge(inside={"status": fewer})["capabilities"].ok


def test_the_init_may_keep_the_capability_the_agent_confines_itself_with():
    admin = INIT_STATUS.replace("CapBnd:\t00000000a80425fb", "CapBnd:\t00000000a82425fb")
    assert not _judge(host={"status": admin})["capabilities"].ok
    assert _judge(host={"status": admin},
                  init_extra_caps=[bundle.LANDLOCK_CAPABILITY])["capabilities"].ok
    # ... but a process inside never: not in effect, not in its bounding set either
    inside = INSIDE_STATUS.replace("CapBnd:\t00000000a80425fb", "CapBnd:\t00000000a82425fb")
    c = _judge(inside={"status": inside}, host={"status": admin},
               init_extra_caps=[bundle.LANDLOCK_CAPABILITY])["capabilities"]
    assert not c.ok and c.detail.endswith("CAP_SYS_ADMIN")


def test_a_leaked_host_fd_must_lead_nowhere():
    assert _judge()["landlock"].detail.startswith("ABI 7")
    c = _judge(inside={"leaked_fd": {"entries": 26}})["landlock"]
    assert not c.ok and "26 entries" in c.detail
    c = _judge(inside={"leaked_fd": {"errno": errno.EPERM}})["landlock"]
    assert not c.ok and "not by Landlock: EPERM" in c.detail
    c = _judge(inside={"leaked_fd": {"error": "timed out"}})["landlock"]
    assert not c.ok and "did not run" in c.detail
    c = _judge(inside={"leaked_fd": None})["landlock"]
    assert not c.ok
    # a kernel without Landlock: the layer is off, which is said, not failed
    c = _judge(inside={"leaked_fd": {"entries": 26}}, host={"landlock_abi": 0})["landlock"]
    assert c.ok and "no Landlock" in c.detail


def test_seccomp_off_fails_where_seen():
    c = _judge(host={"status": INIT_STATUS.replace("Seccomp:\t2", "Seccomp:\t0")})
    assert not c["seccomp_mode"].ok
    assert "init (host view) Seccomp: 0" in c["seccomp_mode"].detail
    assert c["seccomp_mode"].detail.count("Seccomp:") == 2   # the wanted one and the bad one


def test_denied_syscalls_must_be_refused():
    c = _judge(inside={"unshare": 0})["seccomp_denies"]
    assert not c.ok and "unshare succeeded" in c.detail
    c = _judge(inside={"keyctl": errno.ENOKEY})["seccomp_denies"]
    assert not c.ok and "keyctl failed with ENOKEY" in c.detail
    assert _judge(inside={"keyctl": errno.ENOSYS})["seccomp_denies"].ok
    assert _judge(inside={"keyctl": None})["seccomp_denies"].ok     # unknown architecture


def test_no_new_privs_follows_the_bundle():
    assert _judge(no_new_privs=False)["no_new_privs"].ok
    c = _judge(no_new_privs=True)["no_new_privs"]
    assert not c.ok and "NoNewPrivs: 0, the bundle asks for 1" in c.detail


def test_masked_and_readonly_proc():
    c = _judge(inside={"masked": {"/proc/kcore": 4096, "/proc/keys": 0}})["masked_proc"]
    assert not c.ok and "/proc/kcore" in c.detail
    c = _judge(inside={"proc_sys_rdonly": False, "proc_sys_write": 0})["readonly_proc_sys"]
    assert not c.ok and "open for writing: succeeded" in c.detail


def test_limits_against_the_spec():
    c = _judge(host={"memory.max": "max\n"})["memory_limit"]
    assert not c.ok and "no limit in force" in c.detail
    c = _judge(host={"memory.max": "9223372036854771712\n"})["memory_limit"]  # v1 unlimited
    assert not c.ok and "want 1073741824 bytes" in c.detail
    c = _judge(host={"pids.max": None})["pids_limit"]
    assert not c.ok and "not found" in c.detail


def test_disk_quota():
    c = _judge(inside={"root_bytes": 500 << 30})["disk_quota"]
    assert not c.ok and "quota 2048 MiB" in c.detail
    c = _judge(inside={"mounts": "/dev/vda / ext4 rw 0 0\n"})["disk_quota"]
    assert not c.ok and "not an overlay" in c.detail


def test_firewall_table():
    assert selftest.judge_firewall(0, NFT_DENIED, "hutchs").ok
    assert "11 always-denied" in selftest.judge_firewall(0, NFT_DENIED, "hutchs").detail
    c = selftest.judge_firewall(1, "Error: No such file or directory\n", "hutchs")
    assert not c.ok and "missing" in c.detail
    c = selftest.judge_firewall(0, NFT_DENIED.replace("169.254.0.0/16, ", ""), "hutchs")
    assert not c.ok and "169.254.0.0/16" in c.detail


def test_unreadable_inside_facts_fail_rather_than_pass():
    broken = {k: {"errno": errno.EACCES} for k in ("uid_map", "status", "mounts")}
    checks = _judge(inside=broken)
    for name in ("uid_map", "capabilities", "seccomp_mode", "no_new_privs", "disk_quota"):
        assert not checks[name].ok, name


def test_injected_failures():
    checks = [selftest.Check("uid_map", True), selftest.Check("seccomp_mode", True)]
    out = selftest.inject(checks, " seccomp_mode,firewall_table ,".split(","))
    assert selftest.failed(out) == ["seccomp_mode", "firewall_table"]
    assert "HUTCH_SELFTEST_FAIL" in out[1].detail
    assert selftest.inject(checks, [""]) == checks


def test_the_host_fd_waits_for_a_socket_that_is_bound_but_not_yet_listening(tmp_path):
    """The probe's socket file appears at its bind, before its listen: a connect in between
    is refused, and the offer must try again rather than fail the self-test."""
    path = tmp_path / "leak.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    got = []

    def listen_late():
        time.sleep(0.3)
        server.listen(1)
        conn = server.accept()[0]
        got.extend(socket.recv_fds(conn, 16, 1)[1])
        conn.close()

    thread = threading.Thread(target=listen_late)
    thread.start()
    try:
        selftest.offer_host_fd(path, timeout=10)
    finally:
        thread.join(timeout=10)
        server.close()
    assert len(got) == 1 and os.path.samestat(os.fstat(got[0]), os.stat("/"))
    os.close(got[0])
