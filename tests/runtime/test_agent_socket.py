"""The agent socket is connected to as the inode that is there, never through a symlink."""

from __future__ import annotations

import asyncio
import os

import pytest

from hutch.errors import SandboxError
from hutch.runtime.agent_socket import pinned_socket


async def test_connects_to_a_real_socket(tmp_path):
    path = tmp_path / "agent.sock"
    server = await asyncio.start_unix_server(
        lambda r, w: (w.write(b"agent\n"), w.close()), path=str(path))
    try:
        with pinned_socket(path) as target:
            reader, writer = await asyncio.open_unix_connection(target)
        assert await reader.readline() == b"agent\n"
        writer.close()
    finally:
        server.close()


async def test_refuses_a_symlink_to_a_host_socket(tmp_path):
    host = tmp_path / "host.sock"
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(host))
    try:
        os.symlink(host, tmp_path / "agent.sock")
        with pytest.raises(SandboxError):
            with pinned_socket(tmp_path / "agent.sock"):
                pass
    finally:
        server.close()


def test_refuses_a_regular_file(tmp_path):
    (tmp_path / "agent.sock").write_text("x")
    with pytest.raises(SandboxError):
        with pinned_socket(tmp_path / "agent.sock"):
            pass
