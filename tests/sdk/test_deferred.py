"""What only the async constructor does: nothing until awaited (asyncio cannot wait in
``__init__``), then one creation however often it is awaited."""

from __future__ import annotations

import pytest

from hutch import AsyncSandbox, errors
from hutch.sdk import SandboxQuery


async def test_nothing_exists_until_awaited(opts):
    tag = {"suite": "sdk-deferred"}
    pending = AsyncSandbox(timeout=120, metadata=tag, **opts)
    with pytest.raises(errors.InvalidArgumentError, match="not created yet"):
        pending.sandbox_id
    with pytest.raises(errors.InvalidArgumentError):
        pending.commands
    assert "not created" in repr(pending)
    assert await AsyncSandbox.list(SandboxQuery(metadata=tag), **opts).all() == []
    sbx = await pending
    try:
        assert sbx is pending
        assert await sbx is sbx  # awaiting again creates nothing more
        found = await AsyncSandbox.list(SandboxQuery(metadata=tag), **opts).all()
        assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
    finally:
        await sbx.kill()
        await sbx.close()


async def test_a_failed_create_can_be_awaited_again(opts):
    pending = AsyncSandbox(template="no-such-template", **opts)
    for _ in range(2):
        with pytest.raises(errors.TemplateError):
            await pending
    await pending.close()
