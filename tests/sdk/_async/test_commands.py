"""Commands in a real sandbox: foreground, background, streaming, stdin, kill, timeout,
environment, working directory, users, exit codes."""

from __future__ import annotations

import socket
import threading

import pytest

from hutch import AsyncSandbox, errors

from .helpers import eventually


@pytest.fixture(scope="module")
async def sbx(module_opts):
    sandbox = await AsyncSandbox.create(timeout=600, metadata={"suite": "sdk-commands"},
                                        **module_opts)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_foreground_output(sbx):
    result = await sbx.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code, result.error) == (
        "out\n", "err\n", 0, None)


async def test_commands_share_one_connection(sbx, module_opts, monkeypatch):
    # Each command's stream is read to the end of its body, so its connection serves the next
    # command; a stream closed at its last message would cost every command a new connection.
    connects = []
    real = socket.socket.connect

    def counting(self, address):
        connects.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", counting)
    other = await AsyncSandbox.connect(sbx.sandbox_id, **module_opts)
    try:
        await other.commands.run("true")
        assert connects, "the first command of a new client opens a connection"
        before = len(connects)
        for _ in range(5):
            assert (await other.commands.run("echo hi")).stdout == "hi\n"
        assert len(connects) == before
    finally:
        await other.close()


async def test_foreground_callbacks_run_on_the_callers_thread(sbx):
    # A foreground run waits at once, so its stream is read where the caller waits: no thread
    # is started per command (the sync SDK used to start one, and a timer thread too).
    threads = []
    result = await sbx.commands.run("echo a; echo b >&2",
                                    on_stdout=lambda _: threads.append(threading.current_thread()),
                                    on_stderr=lambda _: threads.append(threading.current_thread()))
    assert (result.stdout, result.stderr) == ("a\n", "b\n")
    assert threads and set(threads) == {threading.current_thread()}


async def test_non_zero_exit_raises_with_the_output(sbx):
    with pytest.raises(errors.CommandExitError) as caught:
        await sbx.commands.run("echo partial; echo broke >&2; exit 3")
    assert caught.value.exit_code == 3
    assert caught.value.stdout == "partial\n"
    assert caught.value.stderr == "broke\n"


async def test_env_cwd_and_users(sbx):
    result = await sbx.commands.run('echo "$GREETING" "$PWD"', envs={"GREETING": "hi there"},
                                    cwd="/tmp")
    assert result.stdout == "hi there /tmp\n"
    assert (await sbx.commands.run("whoami")).stdout == "user\n"
    assert (await sbx.commands.run("echo $HOME")).stdout == "/home/user\n"
    root = await sbx.commands.run("whoami; echo $HOME; id -u", user="root")
    assert root.stdout == "root\n/root\n0\n"


async def test_output_streams_as_it_arrives(sbx):
    seen: list = []
    handle = await sbx.commands.run("echo first; sleep 600; echo never", background=True,
                                    on_stdout=seen.append)
    try:
        await eventually(lambda: "first\n" in seen, what="streamed output")
        assert handle.exit_code is None  # still running: the output was not buffered to the end
        assert handle.stdout == "first\n"
    finally:
        assert await handle.kill() is True
    with pytest.raises(errors.CommandExitError):
        await handle.wait()


async def test_callbacks_given_to_wait_receive_earlier_output_too(sbx):
    handle = await sbx.commands.run("echo one; read go; echo two", background=True, stdin=True)
    await eventually(lambda: handle.stdout == "one\n", what="first line")
    seen: list = []
    await handle.send_stdin("\n")
    result = await handle.wait(on_stdout=seen.append)
    assert "".join(seen) == result.stdout == "one\ntwo\n"


async def test_iterating_over_the_output(sbx):
    handle = await sbx.commands.run("echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c",
                                    background=True)
    got = [item async for item in handle]
    assert "".join(out for out, _, _ in got if out) == "a\nc\n"
    assert [err for _, err, _ in got if err] == ["b\n"]
    assert all(pty is None for _, _, pty in got)
    assert [item async for item in handle] != []  # a late iterator replays what was said
    assert (await handle.wait()).stdout == "a\nc\n"


async def test_a_failing_callback_is_reported_by_wait(sbx):
    def explode(text: str) -> None:
        raise ValueError("callback broke")

    handle = await sbx.commands.run("echo hi; sleep 600", background=True, on_stdout=explode)
    try:
        with pytest.raises(errors.SandboxError, match="callback broke"):
            await handle.wait()
    finally:
        assert await handle.kill()


async def test_output_not_retained_still_reaches_callbacks(sbx):
    seen: list = []
    result = await sbx.commands.run("seq 3", on_stdout=seen.append, retain_output=False)
    assert (result.stdout, result.stderr, "".join(seen)) == (None, None, "1\n2\n3\n")
    with pytest.raises(errors.CommandExitError) as caught:
        await sbx.commands.run("echo gone >&2; exit 4", retain_output=False)
    assert caught.value.exit_code == 4


async def test_background_list_and_kill(sbx):
    handle = await sbx.commands.run("sleep 600", background=True)
    assert handle.pid > 0
    listed = await sbx.commands.list()
    assert handle.pid in [p.pid for p in listed]
    mine = next(p for p in listed if p.pid == handle.pid)
    assert mine.args[-1] == "sleep 600"
    assert await sbx.commands.kill(handle.pid) is True
    with pytest.raises(errors.CommandExitError):
        await handle.wait()
    assert handle.pid not in [p.pid for p in await sbx.commands.list()]
    assert await sbx.commands.kill(handle.pid) is False


async def test_stdin(sbx):
    handle = await sbx.commands.run("cat", background=True, stdin=True)
    await sbx.commands.send_stdin(handle.pid, "hello ")
    await handle.send_stdin(b"world\n")
    await eventually(lambda: handle.stdout == "hello world\n", what="echoed stdin")
    await handle.close_stdin()
    result = await handle.wait()
    assert result.stdout == "hello world\n" and result.exit_code == 0


async def test_timeout_kills_the_command(sbx):
    with pytest.raises(errors.TimeoutError_):
        await sbx.commands.run("sleep 600", timeout=2)
    assert not [p for p in await sbx.commands.list() if p.args[-1:] == ["sleep 600"]]


async def test_connect_to_a_running_command(sbx):
    handle = await sbx.commands.run("read line; echo got $line", background=True, stdin=True)
    seen: list = []
    attached = await sbx.commands.connect(handle.pid, on_stdout=seen.append)
    await sbx.commands.send_stdin(handle.pid, "ping\n")
    result = await attached.wait()
    assert result.stdout == "got ping\n" and seen == ["got ping\n"]
    assert (await handle.wait()).stdout == "got ping\n"


async def test_disconnect_leaves_the_command_running(sbx):
    handle = await sbx.commands.run("sleep 600", background=True)
    await handle.disconnect()
    assert handle.pid in [p.pid for p in await sbx.commands.list()]
    assert await sbx.commands.kill(handle.pid)


async def test_utf8_split_across_chunks_and_binary_output(sbx):
    result = await sbx.commands.run("printf 'caf\\xc3'; sleep 0.2; printf '\\xa9\\n'")
    assert result.stdout == "café\n"
    result = await sbx.commands.run("head -c 1000000 /dev/zero | tr '\\0' x")
    assert result.stdout == "x" * 1_000_000
