"""The expiry timer: each running sandbox is killed at its deadline, and a deadline set later
than the nearest one does not make the timer walk the table again."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from hutch.server.expiry import Reaper


class Table:
    """A live table that counts how often the timer walks it."""

    def __init__(self) -> None:
        self.live: dict = {}
        self.walks = 0
        self.killed: list = []

    def __call__(self) -> dict:
        self.walks += 1
        return self.live

    def add(self, sid: str, end_at: float, state: str = "running") -> None:
        self.live[sid] = SimpleNamespace(record=SimpleNamespace(state=state, end_at=end_at))

    async def kill(self, sid: str, reason: str) -> None:
        self.killed.append((sid, reason))
        del self.live[sid]


async def until(predicate, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "not within the time limit"
        await asyncio.sleep(0.01)


async def test_a_sandbox_is_killed_at_its_deadline_and_only_running_ones():
    table = Table()
    reaper = Reaper(table, table.kill)
    table.add("far", time.time() + 3600)
    table.add("pooled", time.time() - 1, state="pooled")
    task = asyncio.create_task(reaper.run())
    try:
        await until(lambda: reaper.nearest is not None)
        table.add("soon", time.time() + 0.05)
        reaper.moved(table.live["soon"].record.end_at)
        await until(lambda: table.killed)
        assert table.killed == [("soon", "timeout")]
        assert set(table.live) == {"far", "pooled"}
    finally:
        task.cancel()


async def test_a_later_deadline_does_not_wake_the_timer():
    table = Table()
    reaper = Reaper(table, table.kill)
    table.add("first", time.time() + 3600)
    task = asyncio.create_task(reaper.run())
    try:
        await until(lambda: reaper.nearest is not None)
        walks = table.walks
        for i in range(20):                 # creates whose deadlines come after the nearest
            table.add(f"later{i}", time.time() + 7200)
            reaper.moved(table.live[f"later{i}"].record.end_at)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert table.walks == walks
        reaper.moved()                      # unknown: always looks again
        await until(lambda: table.walks == walks + 1)
        assert table.killed == []
    finally:
        task.cancel()
