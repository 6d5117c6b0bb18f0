"""Ways to make a sandbox and what it is made with: the constructor (E2B's older shape),
resources (cpu, memory, disk), the network switch, idempotent creation."""

from __future__ import annotations

import uuid

import pytest

from hutch import AsyncSandbox, errors


async def test_constructor_creates(opts):
    sbx = await AsyncSandbox(timeout=120, metadata={"suite": "sdk-ctor"}, envs={"A": "1"},
                             **opts)
    try:
        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata == {"suite": "sdk-ctor"}
        assert (await sbx.commands.run("echo $A")).stdout == "1\n"
    finally:
        assert await sbx.kill() is True
        await sbx.close()


async def test_constructor_as_context_manager_kills_at_exit(opts):
    async with AsyncSandbox(timeout=120, **opts) as sbx:
        sandbox_id = sbx.sandbox_id
        proc = await sbx.exec("true")
        assert await proc.wait() == 0
    assert await AsyncSandbox.kill(sandbox_id, **opts) is False  # already gone


async def test_resources_and_network_reach_the_server(opts):
    sbx = await AsyncSandbox.create(timeout=120, cpu=1, memory_mb=384, disk_mb=1536,
                                    network="internet", **opts)
    try:
        info = await sbx.get_info()
        assert (info.cpu_count, info.memory_mb, info.disk_size_mb) == (1, 384, 1536)
        assert info.allow_internet_access is True
        # The memory limit is the sandbox's own: its cgroup says so from inside.
        limit = await sbx.commands.run(
            "cat /sys/fs/cgroup/memory.max 2>/dev/null || "
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
        assert int(limit.stdout) == 384 * 1024 * 1024
    finally:
        await sbx.kill()
        await sbx.close()


async def test_idempotency_key_gives_the_one_sandbox(opts):
    key = uuid.uuid4().hex
    first = await AsyncSandbox.create(timeout=120, idempotency_key=key, **opts)
    try:
        again = await AsyncSandbox.create(timeout=120, idempotency_key=key, **opts)
        assert again.sandbox_id == first.sandbox_id
        await again.close()
    finally:
        await first.kill()
        await first.close()


async def test_resources_beyond_the_server_limit_are_refused(opts):
    with pytest.raises(errors.InvalidArgumentError, match="cpuCount"):
        await AsyncSandbox.create(timeout=60, cpu=100000, **opts)


async def test_bad_options_fail_before_any_request(opts):
    for bad in ({"network": "wifi"}, {"cpu": 0}, {"memory_mb": -1}, {"disk_mb": 1.5},
                {"network": "none", "allow_internet_access": True}):
        with pytest.raises(errors.InvalidArgumentError):
            await AsyncSandbox.create(url="http://127.0.0.1:9", api_key="unused", **bad)
