"""An exclusive file lock that asyncio tasks, threads and separate processes all respect.

``flock`` locks belong to an open file description, so every acquisition opens the file anew:
two tasks, two threads or two processes then exclude each other alike. The blocking wait runs
on a short-lived thread of its own (not the loop's executor, which a crowd of waiters would
exhaust) and wakes the awaiting task through the loop, so waiting costs no polling.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from pathlib import Path


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def __aenter__(self) -> FileLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await _wait(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    async def __aexit__(self, *exc) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the lock


async def _wait(fd: int) -> None:
    """Block on the lock in a thread; if the waiting task is cancelled meanwhile, the thread
    drops the lock as soon as it gets it, and the descriptor is closed either way."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: OSError | None) -> None:
        if future.cancelled() or error is not None:
            os.close(fd)
            if not future.done():
                future.set_exception(error)
        else:
            future.set_result(None)

    def block() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            error = None
        except OSError as e:
            error = e
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:   # the loop is gone: nobody is waiting any more
            os.close(fd)

    threading.Thread(target=block, name=f"flock:{fd}", daemon=True).start()
    await future
