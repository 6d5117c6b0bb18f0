"""The official `e2b` SDK from PyPI, unchanged, against a real hutch server.

These tests are the compatibility promise: whatever a user's E2B code does with sandboxes,
commands, the PTY and files must work when E2B_API_URL and E2B_SANDBOX_URL point at hutch.
"""

from __future__ import annotations

import time
import uuid

import pytest
from e2b import AsyncSandbox, CommandExitException, Sandbox, SandboxQuery
from e2b.exceptions import NotFoundException, SandboxException, TimeoutException
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


@pytest.fixture
def sbx(server_env):
    sandbox = Sandbox.create(metadata={"suite": "e2b"})
    try:
        yield sandbox
    finally:
        sandbox.kill()


def test_commands_run_as_the_default_user_in_a_login_shell(sbx):
    r = sbx.commands.run("python3 -c 'import sys; print(sys.version_info[0])'; whoami; pwd; echo $HOME")
    assert r.exit_code == 0
    assert r.stdout.split() == ["3", "user", "/home/user", "/home/user"]
    assert sbx.commands.run("whoami", user="root").stdout.strip() == "root"
    assert sbx.commands.run("sudo -n whoami").stdout.strip() == "root"
    assert sbx.commands.run("python --version && curl --version && git --version && tput -T xterm cols").exit_code == 0


def test_non_zero_exit_raises_with_output(sbx):
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert err.value.exit_code == 3
    assert err.value.stdout == "out\n"
    assert err.value.stderr == "err\n"


def test_streaming_callbacks_env_and_cwd(server_env):
    sandbox = Sandbox.create(envs={"SANDBOX_LEVEL": "s"})
    try:
        seen: list[str] = []
        r = sandbox.commands.run(
            "echo $SANDBOX_LEVEL $PER_CALL; pwd; echo e >&2",
            envs={"PER_CALL": "c"}, cwd="/tmp", on_stdout=seen.append,
        )
        assert r.stdout == "s c\n/tmp\n"
        assert r.stderr == "e\n"
        assert "".join(seen) == r.stdout
    finally:
        sandbox.kill()


def test_background_command_stdin_list_and_kill(sbx):
    cat = sbx.commands.run("cat", background=True, stdin=True)
    assert cat.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(cat.pid, "hello\n")
    sbx.commands.close_stdin(cat.pid)
    assert cat.wait().stdout == "hello\n"

    sleeper = sbx.commands.run("sleep 60", background=True)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException):
        sleeper.wait()
    assert sleeper.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(999999) is False


def test_command_timeout_is_enforced_by_the_server(sbx):
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)
    assert sbx.commands.run("echo still-fine").stdout == "still-fine\n"


def test_pty_round_trip_and_resize(sbx):
    out = bytearray()
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(term.pid, b"stty size; echo mark-$((6*7)); exit\n")
    term.wait(on_pty=out.extend)
    assert b"mark-42" in out and b"24 80" in out

    out.clear()
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(term.pid, b"stty size; exit\n")
    term.wait(on_pty=out.extend)
    assert b"30 100" in out


def test_files_round_trip(sbx):
    info = sbx.files.write("/home/user/data.csv", "a,b\n1,2\n")
    assert info.path == "/home/user/data.csv"
    assert sbx.files.read("/home/user/data.csv") == "a,b\n1,2\n"
    blob = bytes(range(256)) * 4096
    sbx.files.write("blob.bin", blob)
    assert bytes(sbx.files.read("/home/user/blob.bin", format="bytes")) == blob
    assert sbx.commands.run("stat -c %U /home/user/blob.bin").stdout.strip() == "user"
    assert sbx.files.exists("/home/user/data.csv")
    assert not sbx.files.exists("/home/user/nope")
    assert sbx.files.make_dir("/home/user/d/e") is True
    assert sbx.files.make_dir("/home/user/d/e") is False
    sbx.files.rename("/home/user/data.csv", "/home/user/d/data.csv")
    names = [e.name for e in sbx.files.list("/home/user/d", depth=2)]
    assert names == ["data.csv", "e"] or sorted(names) == ["data.csv", "e"]
    assert sbx.files.get_info("/home/user/d/data.csv").size == 8
    sbx.files.remove("/home/user/d")
    assert not sbx.files.exists("/home/user/d")
    with pytest.raises(NotFoundException):
        sbx.files.read("/home/user/missing.txt")


def test_files_respect_the_users_permissions(sbx):
    # `user` may sudo without a password, so like E2B a write anywhere succeeds and what it
    # creates is theirs (code written for E2B writes /data.csv as the default user).
    sbx.files.write("/data.csv", "a,b\n")
    assert sbx.commands.run("stat -c %U:%G /data.csv").stdout.strip() == "user:user"
    sbx.files.write("/etc/root-may", "x", user="root")
    assert sbx.commands.run("cat /etc/root-may").stdout == "x"
    # An account without that right keeps exactly its own permissions.
    sbx.commands.run("useradd --no-create-home guest", user="root")
    with pytest.raises(SandboxException):
        sbx.files.write("/etc/not-yours", "x", user="guest")
    assert not sbx.files.exists("/etc/not-yours")


def test_watch_dir_reports_changes(sbx):
    sbx.files.make_dir("/home/user/watched")
    handle = sbx.files.watch_dir("/home/user/watched")
    sbx.files.write("/home/user/watched/f.txt", "1")
    events = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(e.name == "f.txt" for e in events):
        events += handle.get_new_events()
        time.sleep(0.1)
    handle.stop()
    assert any(e.name == "f.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE)
               for e in events)


def test_list_connect_info_and_timeout(server_env):
    tag = uuid.uuid4().hex
    sandbox = Sandbox.create(metadata={"tag": tag}, timeout=120)
    try:
        listed = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        info = sandbox.get_info()
        assert info.metadata == {"tag": tag} and info.template_id
        again = Sandbox.connect(sandbox.sandbox_id)
        assert again.commands.run("echo connected").stdout == "connected\n"
        sandbox.set_timeout(2)
        deadline = time.monotonic() + 30
        while sandbox.is_running() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not sandbox.is_running()
        assert Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items() == []
    finally:
        sandbox.kill()


def test_kill_ends_open_streams_and_the_sandbox(server_env):
    sandbox = Sandbox.create()
    h = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.kill() is True
    with pytest.raises(SandboxException):
        h.wait()
    assert not sandbox.is_running()
    assert Sandbox.kill(sandbox.sandbox_id) is False


async def test_async_sdk_flow(server_env):
    sandbox = await AsyncSandbox.create()
    try:
        r = await sandbox.commands.run("echo async-$((1+1))")
        assert r.stdout == "async-2\n"
        await sandbox.files.write("/home/user/a.txt", b"\x00\xffbin")
        assert await sandbox.files.read("/home/user/a.txt", format="bytes") == b"\x00\xffbin"
        events = []
        handle = await sandbox.files.watch_dir("/home/user", on_event=events.append)
        await sandbox.files.write("/home/user/b.txt", "x")
        for _ in range(200):
            if any(e.name == "b.txt" for e in events):
                break
            import asyncio
            await asyncio.sleep(0.05)
        await handle.stop()
        assert any(e.name == "b.txt" for e in events)
    finally:
        await sandbox.kill()
