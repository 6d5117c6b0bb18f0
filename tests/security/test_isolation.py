"""Isolation asserted from outside the sandbox, through the public API, with hostile code inside."""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from e2b import CommandExitException, Sandbox
from e2b.exceptions import NotFoundException

from tests.conftest import TEST_TEMPLATES_DIR


def host_pids_of(sandbox_id: str) -> list[int]:
    """Host pids of every process in the sandbox, found by its cgroup (named by the id)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroups = Path(f"/proc/{entry}/cgroup").read_text()
        except OSError:
            continue
        if sandbox_id in cgroups:
            pids.append(int(entry))
    return pids


def test_root_inside_is_an_unprivileged_uid_on_the_host(sbx):
    sbx.commands.run("sleep 30", background=True, user="root")
    pids = host_pids_of(sbx.sandbox_id)
    assert pids, "no host process found in the sandbox's cgroup"
    checked = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue  # a short-lived helper (the exec that started sleep) already exited
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert all(int(u) >= 100000 for u in uids), (pid, uids)
        checked += 1
    assert checked, "every process in the sandbox's cgroup vanished before it was read"
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"


def test_host_processes_are_invisible(sbx):
    seen = sbx.commands.run("ls /proc | grep -c '^[0-9]'").stdout.strip()
    assert int(seen) < 20
    assert str(os.getpid()) not in sbx.commands.run("ps -eo pid=").stdout.split() or int(seen) < 20
    out = sbx.commands.run("cat /proc/1/cmdline | tr '\\0' ' '").stdout
    assert "tini" in out or "init" in out


def test_mounting_and_namespace_games_are_denied(sbx):
    for cmd in ("mount -t tmpfs x /mnt", "unshare -U true", "unshare -n true"):
        with pytest.raises(CommandExitException):
            sbx.commands.run(cmd, user="root")
    with pytest.raises(CommandExitException):
        sbx.commands.run("touch /sys/kernel/x || echo > /proc/sysrq-trigger", user="root")


def test_the_template_is_unchanged_after_a_sandbox_writes_everywhere(server_env, sbx):
    marker = f"hutch-marker-{uuid.uuid4().hex[:8]}"
    sbx.commands.run(f"touch /etc/{marker} /usr/bin/{marker} && rm -f /usr/bin/curl", user="root")
    assert sbx.commands.run(f"ls /etc/{marker}").exit_code == 0
    templates = TEST_TEMPLATES_DIR
    assert not list(templates.rglob(marker))
    assert list(templates.rglob("usr/bin/curl"))
    fresh = Sandbox.create()
    try:
        assert fresh.commands.run("which curl").exit_code == 0
        with pytest.raises(CommandExitException):
            fresh.commands.run(f"ls /etc/{marker}")
    finally:
        fresh.kill()


def test_a_symlink_to_root_leads_to_the_sandbox_never_the_host(sbx):
    marker = Path(f"/tmp/hutch-host-{uuid.uuid4().hex}")
    marker.write_text("host secret")
    try:
        sbx.commands.run("ln -s / /home/user/rootlink")
        with pytest.raises(NotFoundException):
            sbx.files.read(f"/home/user/rootlink{marker}")
        inside = sbx.commands.run("cat /etc/hostname").stdout
        assert sbx.files.read("/home/user/rootlink/etc/hostname") == inside
        assert inside.strip() != Path("/etc/hostname").read_text().strip()
    finally:
        marker.unlink()


def test_writing_past_the_disk_quota_fails_with_enospc(sbx):
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("dd if=/dev/zero of=/home/user/fill bs=4M status=none", timeout=120)
    assert "No space left on device" in err.value.stderr
    sbx.commands.run("rm /home/user/fill")
    assert sbx.commands.run("echo ok > /home/user/after && cat /home/user/after").stdout == "ok\n"


def test_a_memory_hog_is_killed_inside_while_others_go_on(server_env, hutch_server, sbx):
    other = Sandbox.create()
    try:
        with pytest.raises(CommandExitException) as err:
            sbx.commands.run("python3 -c 'b = bytearray(3 * 1024**3); print(len(b))'", timeout=120)
        # killed by a signal: envd reports exit code -1 (Go's convention), a shell 137
        assert err.value.exit_code in (-1, 137)
        assert sbx.commands.run("echo alive").stdout == "alive\n"
        assert other.commands.run("echo other").stdout == "other\n"
        with urllib.request.urlopen(hutch_server.url + "/health", timeout=10) as r:
            assert r.status == 200
    finally:
        other.kill()


def test_a_fork_bomb_is_contained(server_env, hutch_server, sbx):
    sbx.commands.run("bash -c ':(){ :|:& };:' >/dev/null 2>&1", background=True)
    other = Sandbox.create()
    try:
        time.sleep(3)
        assert other.commands.run("echo calm").stdout == "calm\n"
        with urllib.request.urlopen(hutch_server.url + "/health", timeout=10) as r:
            assert r.status == 200
        assert len(host_pids_of(sbx.sandbox_id)) <= 1100
    finally:
        other.kill()
    assert sbx.kill() is True


def test_metadata_and_private_addresses_are_unreachable(sbx, fake_network):
    ok = sbx.commands.run(f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://{fake_network['public']}/")
    assert ok.stdout == "200"
    for addr in (fake_network["metadata"], fake_network["private"]):
        with pytest.raises(CommandExitException):
            sbx.commands.run(f"curl -sS -m 3 http://{addr}/", user="root")


def test_network_none_has_no_route_out(server_env, fake_network):
    sandbox = Sandbox.create(allow_internet_access=False)
    try:
        with pytest.raises(CommandExitException):
            sandbox.commands.run(f"curl -sS -m 3 http://{fake_network['public']}/")
        assert sandbox.commands.run("ip -o link | wc -l").stdout.strip() == "1"
    finally:
        sandbox.kill()


def test_sandboxes_can_install_packages_from_the_registry(sbx):
    r = sbx.commands.run("pip install --user --quiet --no-cache-dir six==1.16.0 && python3 -c 'import six; print(six.__version__)'",
                         timeout=180)
    assert r.stdout.strip().endswith("1.16.0")
