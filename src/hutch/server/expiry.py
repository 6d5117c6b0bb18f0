"""Expiry: kill each running sandbox at its deadline, with one timer for all of them.

The timer sleeps until the nearest deadline instead of polling every second; whoever moves a
deadline closer (a create, a set-timeout) sets the wake event so the timer looks again.
Deadlines that passed while the server was down are handled by reconciliation at start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Mapping

from hutch.errors import SandboxNotFoundError

log = logging.getLogger("hutch.server")


async def expire(sandboxes: Callable[[], Mapping], kill: Callable[..., Awaitable[None]],
                 wake: asyncio.Event) -> None:
    """Run forever: ``sandboxes()`` gives the live table (id → object with ``.record``),
    ``kill(id, reason=...)`` ends one."""
    while True:
        now = time.time()
        nearest = None
        expired = []
        for sid, live in list(sandboxes().items()):
            if live.record.state != "running":
                continue
            if live.record.end_at <= now:
                expired.append(sid)
            elif nearest is None or live.record.end_at < nearest:
                nearest = live.record.end_at
        for sid in expired:
            try:
                await kill(sid, reason="timeout")
            except SandboxNotFoundError:
                pass                  # killed meanwhile
            except Exception:
                log.exception("expiring %s failed", sid)
        if expired:
            continue
        wake.clear()
        wait = None if nearest is None else max(0.0, nearest - time.time())
        try:
            await asyncio.wait_for(wake.wait(), wait)
        except (asyncio.TimeoutError, TimeoutError):
            pass
