"""``sbx.exec(*argv)`` in a real sandbox: no shell, readers, stdin, exit codes, pid,
timeouts, user/cwd/env."""

from __future__ import annotations

import pytest

from hutch import AsyncSandbox, errors


@pytest.fixture(scope="module")
async def sbx(module_opts):
    sandbox = await AsyncSandbox.create(timeout=600, metadata={"suite": "sdk-exec"},
                                        **module_opts)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_argv_runs_without_a_shell(sbx):
    proc = await sbx.exec("printf", "%s|", "a b", "$HOME", "*")
    assert await proc.wait() == 0
    assert proc.returncode == 0
    assert await proc.stdout.read() == "a b|$HOME|*|"
    assert await proc.stderr.read() == ""


async def test_non_zero_exit_is_a_result_not_an_error(sbx):
    proc = await sbx.exec("sh", "-c", "echo out; echo err >&2; exit 3")
    assert await proc.wait() == 3
    assert (proc.returncode, proc.poll()) == (3, 3)
    assert await proc.stdout.read() == "out\n"
    assert await proc.stderr.read() == "err\n"


async def test_lines_as_they_come_and_reads_consume(sbx):
    proc = await sbx.exec("sh", "-c", "for i in 1 2 3; do echo line$i; done; printf tail")
    lines = []
    async for line in proc.stdout:
        lines.append(line)
    assert lines == ["line1\n", "line2\n", "line3\n", "tail"]
    assert await proc.stdout.read() == ""  # all of it was handed out already

    proc = await sbx.exec("sh", "-c", "echo first; echo second; echo third")
    async for line in proc.stdout:
        assert line == "first\n"
        break
    assert await proc.stdout.read() == "second\nthird\n"
    assert await proc.wait() == 0


async def test_stderr_lines_while_stdout_is_unread(sbx):
    proc = await sbx.exec("python3", "-c",
                          "import sys\nfor i in range(3): print('e', i, file=sys.stderr)\n"
                          "print('x' * 200000)")
    got = [line async for line in proc.stderr]
    assert got == ["e 0\n", "e 1\n", "e 2\n"]
    assert await proc.stdout.read() == "x" * 200000 + "\n"


async def test_stdin_write_and_eof(sbx):
    proc = await sbx.exec("cat")
    await proc.stdin.write("hello\n")
    await proc.stdin.write(b"bytes too")
    await proc.stdin.drain()
    assert proc.returncode is None  # cat waits for the end of its input
    await proc.stdin.write_eof()
    assert await proc.wait() == 0
    assert await proc.stdout.read() == "hello\nbytes too"


async def test_eof_to_a_process_that_has_ended_is_no_error(sbx):
    # The README's example: a process that exits once it has read its line may be gone before
    # write_eof reaches it. Here it certainly is.
    proc = await sbx.exec("python3", "-c", "print(input().upper())")
    await proc.stdin.write("shout\n")
    assert await proc.wait() == 0
    await proc.stdin.write_eof()
    assert await proc.stdout.read() == "SHOUT\n"


async def test_pid_and_kill(sbx):
    proc = await sbx.exec("sleep", "600")
    assert proc.pid > 0
    assert proc.pid in [p.pid for p in await sbx.commands.list()]
    assert proc.returncode is None
    assert await proc.kill() is True
    code = await proc.wait()
    assert code != 0 and proc.returncode == code
    assert proc.pid not in [p.pid for p in await sbx.commands.list()]


async def test_cwd_envs_user(sbx):
    proc = await sbx.exec("sh", "-c", 'echo "$GREETING|$(pwd)|$(whoami)"', cwd="/tmp",
                          envs={"GREETING": "hi there"}, user="root")
    assert await proc.wait() == 0
    assert await proc.stdout.read() == "hi there|/tmp|root\n"
    default = await sbx.exec("sh", "-c", 'echo "$(pwd)|$(whoami)"')
    assert await default.stdout.read() == "/home/user|user\n"
    modal_names = await sbx.exec("sh", "-c", 'echo "$V|$(pwd)"', workdir="/etc", env={"V": "1"})
    assert await modal_names.stdout.read() == "1|/etc\n"
    with pytest.raises(errors.InvalidArgumentError):
        await sbx.exec("true", cwd="/tmp", workdir="/etc")


async def test_timeout_kills_the_process(sbx):
    proc = await sbx.exec("sh", "-c", "echo started; exec sleep 600", timeout=1)
    with pytest.raises(errors.TimeoutError_):
        await proc.wait()
    assert await proc.stdout.read() == "started\n"


async def test_bad_argv(sbx):
    with pytest.raises(errors.InvalidArgumentError):
        await sbx.exec()
    with pytest.raises(errors.InvalidArgumentError):
        await sbx.exec("echo", 3)
    with pytest.raises(errors.HutchError) as caught:
        await sbx.exec("/no/such/program")
    assert "no/such/program" in str(caught.value)
