"""The few concurrency primitives that differ between the async and the sync SDK.

Hand-written on each side (this file and ``_sync/_backend.py``); everything else in the
package is generated from the async source. Here a background reader is an asyncio task;
on the sync side it is a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from hutch import errors


class Worker:
    """Runs ``fn()`` in the background: reading a stream while the caller does other things."""

    def __init__(self, fn: Callable[[], Awaitable[None]], abort: Callable[[], None],
                 background: bool = True) -> None:
        # ``abort`` unblocks a pending read on the sync side; a task is cancelled instead.
        # ``background=False`` saves the sync side a thread; a task is cheap, so always one.
        self._task = asyncio.get_running_loop().create_task(fn())

    def done(self) -> bool:
        return self._task.done()

    async def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the worker to finish; False if ``timeout`` passed first."""
        done, _ = await asyncio.wait([self._task], timeout=timeout)
        return bool(done)

    async def cancel(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])


class Queue(asyncio.Queue):
    """Hands items from the reader to an iterating caller (``put_nowait``, ``await get()``)."""


def lock() -> Any:
    """Guards state shared with the reader; one event loop thread needs no real lock."""
    return contextlib.nullcontext()


async def call(callback: Optional[Callable[..., Any]], *args: Any) -> None:
    """Invoke a user callback; async callbacks are awaited, as in e2b's async SDK."""
    if callback is None:
        return
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


async def gather(*aws: Awaitable[Any]) -> list:
    return list(await asyncio.gather(*aws))


def abort_response(response: Any) -> None:
    """Nothing to do: cancelling the reading task interrupts the read."""


@contextlib.asynccontextmanager
async def deadline(seconds: Optional[float], abort: Callable[[], None],
                   what: str) -> AsyncIterator[None]:
    """Bound the block to ``seconds`` (None: unbounded); past it, raise ``TimeoutError_``."""
    if not seconds:
        yield
        return
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise errors.TimeoutError_(f"{what} took longer than {seconds:g} s") from None


async def sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


class Deferred:
    """``await obj`` runs ``obj._ready()`` and gives ``obj``: the work a constructor cannot do
    in asyncio (``await AsyncSandbox(...)``)."""

    def __await__(self) -> Any:
        return self._ready().__await__()  # type: ignore[attr-defined]


def construct(ready: Callable[[], Awaitable[Any]]) -> None:
    """Nothing now: the object finishes when awaited (``Deferred``) or entered."""
