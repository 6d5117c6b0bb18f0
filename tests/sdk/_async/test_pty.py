"""Interactive terminals in a real sandbox."""

from __future__ import annotations

import pytest

from hutch import AsyncSandbox, errors
from hutch.sdk import PtySize

from .helpers import eventually


@pytest.fixture(scope="module")
async def sbx(module_opts):
    sandbox = await AsyncSandbox.create(timeout=600, metadata={"suite": "sdk-pty"},
                                        **module_opts)
    try:
        yield sandbox
    finally:
        await sandbox.kill()
        await sandbox.close()


async def test_pty_session(sbx):
    output = bytearray()
    terminal = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=output.extend)
    await sbx.pty.send_stdin(terminal.pid, b"echo $((6*7)) $TERM\n")
    await eventually(lambda: b"42 xterm-256color" in output, what="pty output")
    await sbx.pty.resize(terminal.pid, PtySize(rows=40, cols=132))
    await sbx.pty.send_stdin(terminal.pid, b"stty size\n")
    await eventually(lambda: b"40 132" in output, what="the new size")
    await sbx.pty.send_stdin(terminal.pid, b"exit 0\n")
    result = await terminal.wait()
    assert result.exit_code == 0


async def test_pty_kill(sbx):
    terminal = await sbx.pty.create(PtySize(rows=24, cols=80))
    assert await sbx.pty.kill(terminal.pid) is True
    with pytest.raises(errors.CommandExitError):
        await terminal.wait()
