"""The warm pool: sandboxes of one template started ahead of time and handed out on create.

Starting a sandbox costs the OCI runtime's work plus the agent's start (a Python process in a
fresh container): on a small host hundreds of milliseconds. A pooled sandbox has all of that
done; handing it out is one ``/init`` on its agent (the caller's env vars and a fresh access
token) and one store update, a few milliseconds.

Only creates that ask for exactly what a pooled sandbox is (the pool's template, the default
network mode and resources, a token) are served from it; everything else starts fresh. Pooled
sandboxes have records in state ``pooled`` (never listed, never reachable through the proxy);
the next server start destroys any it finds, and the pool refills in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hutch.server.keys import new_sandbox_id, new_token
from hutch.server.store import SandboxRecord
from hutch.server.upstream import DEFAULT_USER

if TYPE_CHECKING:
    from hutch.server.manager import Live, SandboxManager

log = logging.getLogger("hutch.server.pool")


class WarmPool:
    def __init__(self, manager: "SandboxManager", template: str, size: int) -> None:
        self.manager = manager
        self.template = template
        self.size = size
        self._ready: list[Live] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def serves(self, template: str, network: str, secure: bool) -> bool:
        return template == self.template and secure and \
            network == self.manager.config.default_network

    def take(self) -> "Live | None":
        """The oldest ready sandbox, if any; the pool starts a replacement."""
        self._wake.set()
        return self._ready.pop(0) if self._ready else None

    @property
    def ready(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        self._task = asyncio.create_task(self._fill(), name="hutch-pool")

    async def close(self) -> None:
        """Stop refilling and destroy what was never handed out (it would outlive us)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        ready, self._ready = self._ready, []
        for live in ready:
            await self.manager.discard(live, "server stopped")

    async def _start_one(self, template: str) -> "Live":
        """Start a sandbox with the defaults, for the pool (not handed out yet)."""
        cfg = self.manager.config
        tmpl = await self.manager.template(template)
        now = time.time()
        rec = SandboxRecord(
            id=new_sandbox_id(), template=template, digest=getattr(tmpl, "digest", None),
            state="creating", created_at=now, end_at=now + cfg.max_timeout,
            cpu=cfg.default_cpu, memory_mb=cfg.default_memory_mb, disk_mb=cfg.default_disk_mb,
            pids=cfg.default_pids, network=cfg.default_network, access_token=new_token(),
        )
        return await self.manager.boot(rec, tmpl, {}, "pooled")

    async def claim(self, live: "Live", template: str, timeout: int, metadata: dict | None,
                     env_vars: dict | None, idempotency_key: str | None,
                     owner: str | None = None, egress: dict | None = None,
                     ) -> SandboxRecord | None:
        """Hand a pooled sandbox out: give its agent the caller's env and a fresh token."""
        rec = live.record
        token = new_token()
        try:
            await live.link.init(dict(env_vars or {}), token, DEFAULT_USER,
                                 current_token=rec.access_token)
        except Exception as exc:
            log.warning("pooled sandbox %s unusable, starting a fresh one: %s", rec.id, exc)
            await self.manager.discard(live, f"pool claim failed: {exc}")
            return None
        now = time.time()
        live.record = self.manager.store.update(
            rec, state="running", access_token=token, metadata=dict(metadata or {}),
            env_vars=dict(env_vars or {}), created_at=now, started_at=now, end_at=now + timeout,
            alias=template if template != rec.template else None,
            idempotency_key=idempotency_key, owner=owner, egress=egress)
        self.manager.store.move_to_end(rec.id)
        self.manager.deadline_changed()
        return live.record

    async def _fill(self) -> None:
        failures = 0
        while True:
            while len(self._ready) < self.size:
                try:
                    live = await self._start_one(self.template)
                except Exception as exc:  # keep serving creates the slow way meanwhile
                    failures += 1
                    delay = min(60.0, 0.5 * 2 ** failures)
                    log.warning("warm pool: starting a sandbox failed (%s); retry in %.0f s",
                                exc, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self._ready.append(live)
            self._wake.clear()
            await self._wake.wait()
