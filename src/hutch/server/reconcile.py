"""Start-up reconciliation: make the store and what runs on the host agree.

Sandboxes keep running while the server is down, so the server that starts next finds some mix
of: sandboxes it should serve again (adopted), sandboxes whose time ran out meanwhile (killed,
recorded as ``timeout``), creates that were interrupted half-way (destroyed, ``error``), records
whose sandbox is gone (a host reboot: ``killed``), never-handed-out warm-pool sandboxes
(destroyed) and kernel objects with no live record at all (orphans, destroyed).

Orphans are destroyed at once rather than after a grace period: the record is always written
before the runtime makes anything and this server is the store's only writer, so nothing can be
half-way through a create while this runs. If the store cannot be read, this raises and the
server does not start: nothing is destroyed on a guess.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Awaitable, Callable

from hutch.server import audit
from hutch.server.store import LIVE_STATES, SandboxRecord, Store

log = logging.getLogger("hutch.server")


async def maybe_await(value):
    return await value if inspect.isawaitable(value) else value


async def is_alive(runtime: Any, sandbox_id: str) -> bool:
    """Does the sandbox's init still run? (True when the runtime cannot tell.)"""
    probe = getattr(runtime, "is_running", None)
    return True if probe is None else bool(await maybe_await(probe(sandbox_id)))


async def destroy_quietly(runtime: Any, sandbox_id: str) -> None:
    try:
        await runtime.destroy(sandbox_id)
    except Exception as exc:  # recorded already; the next start tries again
        log.error("destroying %s failed: %s", sandbox_id, exc)


async def reconcile(store: Store, runtime: Any,
                    adopt: Callable[[SandboxRecord], Awaitable[bool]]) -> dict[str, list[str]]:
    """Bring store and host in line; ``adopt`` re-attaches one sandbox (False: it failed).

    Returns the ids per decision, which are also logged."""
    report: dict[str, list[str]] = {"adopted": [], "orphans": [], "expired": [], "lost": [],
                                    "failed": [], "unpooled": []}
    running = set(await maybe_await(runtime.list()))
    now = time.time()
    to_adopt: list[SandboxRecord] = []
    known: set[str] = set()
    for rec in store.in_states(LIVE_STATES):
        known.add(rec.id)
        if rec.state == "pooled":
            # Never handed out: cheaper to start afresh than to vet.
            if rec.id in running:
                await destroy_quietly(runtime, rec.id)
            store.update(rec, state="killed", reason="warm pool emptied at start", ended_at=now)
            report["unpooled"].append(rec.id)
        elif rec.state == "creating":
            # The server stopped half-way through a create: nobody got this sandbox.
            if rec.id in running:
                await destroy_quietly(runtime, rec.id)
            store.update(rec, state="error", reason="server stopped during create", ended_at=now)
            audit.lifecycle(store, rec.id, "error", reason="server stopped during create")
            report["failed"].append(rec.id)
        elif rec.id not in running:
            store.update(rec, state="killed", reason="not found at server start", ended_at=now)
            audit.lifecycle(store, rec.id, "lost", reason="not found at server start")
            report["lost"].append(rec.id)
        elif not await is_alive(runtime, rec.id):
            # Leftovers only (say after a host reboot): the work inside is gone.
            store.update(rec, state="killed", reason="not running at server start", ended_at=now)
            audit.lifecycle(store, rec.id, "lost", reason="not running at server start")
            await destroy_quietly(runtime, rec.id)
            report["lost"].append(rec.id)
        elif rec.end_at <= now:
            store.update(rec, state="killed", reason="timeout", ended_at=now)
            audit.lifecycle(store, rec.id, "expired", reason="timeout, while the server was down")
            await destroy_quietly(runtime, rec.id)
            report["expired"].append(rec.id)
        else:
            to_adopt.append(rec)
    # The record is always written before the runtime makes anything, and this server is
    # the only writer, so a sandbox without a live record is nobody's: destroy it now.
    for orphan in sorted(running - known):
        await destroy_quietly(runtime, orphan)
        report["orphans"].append(orphan)
    results = await asyncio.gather(*(adopt(rec) for rec in to_adopt))
    for rec, ok in zip(to_adopt, results):
        report["adopted" if ok else "failed"].append(rec.id)
    for what, ids in report.items():
        if ids:
            log.info("reconcile: %s %d sandbox(es): %s", what, len(ids), " ".join(ids))
    return report
