"""Sandbox lifecycle through the SDK against a real server: create, inspect, list,
connect, extend, kill."""

from __future__ import annotations

import time
import uuid

import pytest

from hutch import AsyncSandbox, errors
from hutch.sdk import SandboxQuery, SandboxState
from hutch.sdk._async import _backend

from .helpers import PATIENCE


async def test_create_inspect_list_kill(opts):
    tag = uuid.uuid4().hex
    sbx = await AsyncSandbox.create(timeout=120, metadata={"suite": "sdk", "tag": tag},
                                    envs={"SANDBOX_WIDE": "yes"}, **opts)
    try:
        assert sbx.sandbox_id.isalnum() and sbx.sandbox_id.islower()
        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id == "base"
        assert info.metadata.get("tag") == tag
        assert info.state is SandboxState.RUNNING
        assert await sbx.is_running()

        result = await sbx.commands.run("echo $SANDBOX_WIDE")
        assert result.stdout == "yes\n"

        found = await AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), **opts).all()
        assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
        class_info = await AsyncSandbox.get_info(sbx.sandbox_id, **opts)
        assert class_info.metadata == info.metadata

        await sbx.set_timeout(600)
        later = await sbx.get_info()
        assert later.end_at > info.end_at

        assert await sbx.kill() is True
        assert not await sbx.is_running()
        assert await sbx.kill() is False
        with pytest.raises(errors.SandboxNotFoundError):
            await sbx.get_info()
    finally:
        await AsyncSandbox.kill(sbx.sandbox_id, **opts)
        await sbx.close()


async def test_connect_by_id_and_kill_by_class(opts):
    first = await AsyncSandbox.create(timeout=120, **opts)
    try:
        await first.files.write("/tmp/marker", "from the first handle")
        second = await AsyncSandbox.connect(first.sandbox_id, **opts)
        try:
            assert second.sandbox_id == first.sandbox_id
            assert await second.files.read("/tmp/marker") == "from the first handle"
        finally:
            await second.close()
        assert await AsyncSandbox.kill(first.sandbox_id, **opts) is True
        assert not await first.is_running()
    finally:
        await first.kill()
        await first.close()


async def test_context_manager_kills_on_exit(opts):
    async with await AsyncSandbox.create(timeout=120, **opts) as sbx:
        sandbox_id = sbx.sandbox_id
        assert (await sbx.commands.run("true")).exit_code == 0
    with pytest.raises(errors.SandboxNotFoundError):
        await AsyncSandbox.get_info(sandbox_id, **opts)


async def test_timeout_ends_the_sandbox(opts):
    sbx = await AsyncSandbox.create(timeout=120, **opts)
    try:
        await sbx.set_timeout(1)
        deadline = time.monotonic() + PATIENCE
        while await sbx.is_running():
            assert time.monotonic() < deadline, "the sandbox outlived its timeout"
            await _backend.sleep(0.2)
    finally:
        await sbx.kill()
        await sbx.close()


async def test_unknown_sandbox_and_bad_key(opts):
    with pytest.raises(errors.SandboxNotFoundError):
        await AsyncSandbox.connect("doesnotexist0000", **opts)
    assert await AsyncSandbox.kill("doesnotexist0000", **opts) is False
    with pytest.raises(errors.AuthenticationError):
        await AsyncSandbox.create(url=opts["url"], api_key="e2b_" + "0" * 40)
    with pytest.raises(errors.TemplateError):
        await AsyncSandbox.create(template="no-such-template", **opts)


async def test_list_pages_and_metrics(opts):
    tag = uuid.uuid4().hex
    made = [await AsyncSandbox.create(timeout=120, metadata={"tag": tag}, **opts)
            for _ in range(3)]
    try:
        pager = AsyncSandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2, **opts)
        first = await pager.next_items()
        assert len(first) == 2 and pager.has_next
        rest = await pager.all()
        assert not pager.has_next
        assert sorted(s.sandbox_id for s in first + rest) == sorted(s.sandbox_id for s in made)
        metrics = await made[0].get_metrics()
        assert metrics and metrics[-1].mem_total > 0
    finally:
        for sbx in made:
            await sbx.kill()
            await sbx.close()


async def test_killing_the_sandbox_ends_running_commands(opts):
    sbx = await AsyncSandbox.create(timeout=120, **opts)
    try:
        handle = await sbx.commands.run("sleep 600", background=True)
        assert await AsyncSandbox.kill(sbx.sandbox_id, **opts)
        with pytest.raises(errors.SandboxNotFoundError):
            await handle.wait()
        with pytest.raises(errors.SandboxNotFoundError):
            await sbx.commands.run("true")
    finally:
        await sbx.kill()
        await sbx.close()
