"""Waiting for a condition in tests, with a deadline generous for a busy 2-core machine."""

from __future__ import annotations

import time
from typing import Callable

from hutch.sdk._async import _backend

PATIENCE = 60.0


async def eventually(predicate: Callable[[], bool], timeout: float = PATIENCE,
                     what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await _backend.sleep(0.05)
