"""Expiry: kill each running sandbox at its deadline, with one timer for all of them.

The timer sleeps until the nearest deadline instead of polling every second; whoever moves a
deadline closer than that (a create, a set-timeout) wakes it so that it looks again.
Deadlines that passed while the server was down are handled by reconciliation at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Mapping

from hutch.errors import SandboxNotFoundError

log = logging.getLogger("hutch.server")


class Reaper:
    """Kills each running sandbox of ``sandboxes()`` (id → object with ``.record``) at its
    deadline, through ``kill(id, reason=...)``.

    It scans the table only when the nearest deadline comes, or when one is set sooner than
    that (:meth:`moved`): a create whose deadline is later than the nearest, as most are,
    costs it nothing, where a scan per create would cost every create a walk over all the
    sandboxes."""

    def __init__(self, sandboxes: Callable[[], Mapping],
                 kill: Callable[..., Awaitable[None]]) -> None:
        self.sandboxes, self.kill = sandboxes, kill
        self.nearest: float | None = None   # the deadline the timer sleeps until, if any
        self._wake = asyncio.Event()

    def moved(self, end_at: float | None = None) -> None:
        """A deadline moved to ``end_at`` (None: unknown, look again in any case)."""
        if end_at is None or self.nearest is None or end_at < self.nearest:
            self._wake.set()

    async def run(self) -> None:
        """Run forever."""
        while True:
            now = time.time()
            nearest = None
            expired = []
            for sid, live in list(self.sandboxes().items()):
                if live.record.state != "running":
                    continue
                if live.record.end_at <= now:
                    expired.append(sid)
                elif nearest is None or live.record.end_at < nearest:
                    nearest = live.record.end_at
            for sid in expired:
                try:
                    await self.kill(sid, reason="timeout")
                except SandboxNotFoundError:
                    pass                  # killed meanwhile
                except Exception:
                    log.exception("expiring %s failed", sid)
            if expired:
                continue                  # deadlines may have moved during the kills
            # No await between the scan and the wait: nothing can move a deadline unseen.
            self.nearest = nearest
            self._wake.clear()
            try:
                async with asyncio.timeout(None if nearest is None
                                           else max(0.0, nearest - time.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
