"""SandboxManager.quiet: when the warm pools may refill (no create in flight, requests paused)."""

from __future__ import annotations

import asyncio
import time

from hutch.server.config import Config
from hutch.server.manager import SandboxManager


def manager(tmp_path) -> SandboxManager:
    config = Config.from_env({"HUTCH_DATA_DIR": str(tmp_path)})
    return SandboxManager(config, None, runtime=None, templates=None)


def test_at_once_when_nothing_happened(tmp_path):
    async def main():
        m = manager(tmp_path)
        await asyncio.wait_for(m.quiet(pause=0.1, longest=30), 10)
    asyncio.run(main())


def test_waits_for_requests_to_pause(tmp_path):
    async def main():
        m = manager(tmp_path)
        m.busy()
        began = time.monotonic()
        await asyncio.wait_for(m.quiet(pause=0.3, longest=30), 10)
        return time.monotonic() - began
    assert asyncio.run(main()) >= 0.3


def test_a_request_meanwhile_restarts_the_pause(tmp_path):
    async def main():
        m = manager(tmp_path)
        m.busy()
        waiter = asyncio.create_task(m.quiet(pause=0.3, longest=30))
        await asyncio.sleep(0.2)
        m.busy()
        second = time.monotonic()
        await asyncio.wait_for(waiter, 10)
        return time.monotonic() - second
    assert asyncio.run(main()) >= 0.3


def test_a_server_never_quiet_still_refills_after_longest(tmp_path):
    async def main():
        m = manager(tmp_path)

        async def chatter():
            while True:
                m.busy()
                await asyncio.sleep(0.01)
        task = asyncio.create_task(chatter())
        try:
            began = time.monotonic()
            await asyncio.wait_for(m.quiet(pause=0.1, longest=0.5), 10)
            return time.monotonic() - began
        finally:
            task.cancel()
    assert asyncio.run(main()) >= 0.5


def test_never_while_a_create_is_in_flight(tmp_path):
    async def main():
        m = manager(tmp_path)
        m._creates_idle.clear()          # what create() does while it runs
        waiter = asyncio.create_task(m.quiet(pause=0.05, longest=0.1))
        await asyncio.sleep(0.5)         # past both pause and longest
        assert not waiter.done()
        m._creates_idle.set()
        await asyncio.wait_for(waiter, 10)
    asyncio.run(main())
