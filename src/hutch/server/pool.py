"""Warm pools: sandboxes of a template started ahead of time and handed out on create.

Starting a sandbox costs the OCI runtime's work plus the agent's start (a Python process in a
fresh container): on a small host a hundred milliseconds and more; a ``code-interpreter``
sandbox's kernel and data stack take a second more. A pooled sandbox has all of that done;
handing it out (a *claim*) applies what the create asked for and is a few milliseconds: the
caller's env vars, default user and a fresh access token (one ``/init`` on its agent), its
CPU and memory (cgroup writes), its egress policy (one nftables transaction) and its
metadata and timeout (one store update).

A create a pool cannot serve starts cold: another disk size (the writable layer's
filesystem is made at start), another network mode (a pooled sandbox has the server's
default), no access token (``secure: false``), or an empty pool. A pooled sandbox is handed
out once and never comes back. Pooled sandboxes have records in state ``pooled`` (never
listed, never reachable through the proxy); the next server start destroys any it finds, and
the pools refill in the background, one sandbox at a time, never while a create is in
flight and only once requests for sandboxes have paused (or the refill has waited a few
seconds), so a refill does not take the CPU from a sandbox just handed out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hutch.server import startup
from hutch.server.keys import new_sandbox_id, new_token
from hutch.server.store import SandboxRecord
from hutch.server.upstream import CODE_INTERPRETER_PORT, DEFAULT_USER

if TYPE_CHECKING:
    from hutch.server.manager import Live, SandboxManager

log = logging.getLogger("hutch.server.pool")

#: Imported in a pooled code-interpreter sandbox's default kernel (what agents reach for
#: first; each import is a fraction of a second the first cell no longer waits for).
WARM_IMPORTS = ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"]
#: How long warming a code-interpreter sandbox (kernel start and imports) may take.
WARM_TIMEOUT = 180.0


class WarmPool:
    def __init__(self, manager: "SandboxManager", template: str, size: int) -> None:
        self.manager = manager
        self.template = template
        self.size = size
        self._ready: list[Live] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.starting = 0
        self.hits = 0          # creates served from the pool
        self.misses = 0        # creates the pool could have served but had nothing ready
        self.refills = 0
        self.refill_seconds_sum = 0.0
        self.last_refill_seconds: float | None = None
        self._taken: list[float] = []   # monotonic times of takes not yet made up for

    def serves(self, template: str, network: str, secure: bool, disk_mb: int) -> bool:
        cfg = self.manager.config
        return template == self.template and secure and network == cfg.default_network \
            and disk_mb == cfg.default_disk_mb

    def take(self) -> "Live | None":
        """The oldest ready sandbox, if any; the pool starts a replacement."""
        self._wake.set()
        if not self._ready:
            self.misses += 1
            return None
        self._taken.append(time.monotonic())
        return self._ready.pop(0)

    @property
    def ready(self) -> int:
        return len(self._ready)

    def stats(self) -> dict[str, Any]:
        """What ``/health``, ``hutch doctor`` and ``/metrics`` show of the pool. Refill lag:
        from a sandbox being taken to its replacement being ready."""
        return {"template": self.template, "size": self.size, "ready": self.ready,
                "starting": self.starting, "hits": self.hits, "misses": self.misses,
                "refills": self.refills, "refill_seconds_sum": self.refill_seconds_sum,
                "last_refill_seconds": self.last_refill_seconds}

    def start(self) -> None:
        self._task = asyncio.create_task(self._fill(), name=f"hutch-pool-{self.template}")

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

    async def _start_one(self) -> "Live":
        """Start a sandbox with the defaults, for the pool (not handed out yet)."""
        cfg = self.manager.config
        tmpl = await self.manager.template(self.template)
        now = time.time()
        rec = SandboxRecord(
            id=new_sandbox_id(), template=self.template, digest=getattr(tmpl, "digest", None),
            state="creating", created_at=now, end_at=now + cfg.max_timeout,
            cpu=cfg.default_cpu, memory_mb=cfg.default_memory_mb, disk_mb=cfg.default_disk_mb,
            pids=cfg.default_pids, network=cfg.default_network, access_token=new_token(),
        )
        live = await self.manager.boot(rec, tmpl, {}, "pooled")
        try:
            # The first command a sandbox runs pays for its overlay's first lookups of the
            # shell and the login scripts (inodes are per mount): paid here instead.
            await startup.run(live.link, "/bin/bash", ["-l", "-c", "true"], user=DEFAULT_USER,
                              token=rec.access_token)
        except BaseException as exc:
            await asyncio.shield(self.manager.discard(live, f"warming failed: {exc}"))
            raise
        if live.interpreter:
            try:
                status, body = await live.port(CODE_INTERPRETER_PORT).call(
                    "POST", "/warm", {"imports": WARM_IMPORTS, "zygote": True}, timeout=WARM_TIMEOUT)
                if status != 200:
                    raise RuntimeError(f"the interpreter refused /warm: {status} {body[:200]!r}")
            except BaseException as exc:
                await asyncio.shield(self.manager.discard(live, f"warming failed: {exc}"))
                raise
        return live

    async def claim(self, live: "Live", *, template: str, timeout: int,
                    metadata: dict | None, env_vars: dict | None,
                    idempotency_key: str | None, owner: str | None, egress: dict | None,
                    cpu: float, memory_mb: int,
                    timing: dict[str, float] | None = None) -> SandboxRecord | None:
        """Hand a pooled sandbox out with what the create asked for; None (and the sandbox
        destroyed) if it cannot be, and the create starts one cold instead. ``timing`` gets
        the seconds of each step (the create's Server-Timing)."""
        rec = live.record
        token = new_token()
        manager = self.manager
        timing = {} if timing is None else timing
        t = time.perf_counter()
        try:
            # Always, and first: it also lifts the background CPU weight and niceness the
            # sandbox waited at, so its agent answers what follows at full speed.
            await manager.runtime.resize(rec.id, cpu, memory_mb)
            timing["claim_cgroup"] = time.perf_counter() - t
            policy = manager.egress_policy(egress, rec.network)
            if policy is not None and not policy.is_open:
                t = time.perf_counter()
                await manager.runtime.set_egress(rec.id, policy)
                timing["claim_egress"] = time.perf_counter() - t
            t = time.perf_counter()
            await live.link.init(dict(env_vars or {}), token, DEFAULT_USER,
                                 current_token=rec.access_token)
            timing["claim_init"] = time.perf_counter() - t
        except Exception as exc:
            self.misses += 1
            log.warning("pooled sandbox %s unusable, starting a fresh one: %s", rec.id, exc)
            await manager.discard(live, f"pool claim failed: {exc}")
            return None
        self.hits += 1
        t = time.perf_counter()
        now = time.time()
        live.record = manager.store.update(
            rec, state="running", access_token=token, metadata=dict(metadata or {}),
            env_vars=dict(env_vars or {}), created_at=now, started_at=now, end_at=now + timeout,
            alias=template if template != rec.template else None, cpu=cpu,
            memory_mb=memory_mb, idempotency_key=idempotency_key, owner=owner, egress=egress)
        manager.store.move_to_end(rec.id)
        manager.deadline_changed(live.record.end_at)
        timing["claim_store"] = time.perf_counter() - t
        return live.record

    async def _fill(self) -> None:
        failures = 0
        while True:
            while len(self._ready) < self.size:
                # Live requests first: a refill starts once requests pause (and never while
                # a create is in flight).
                await self.manager.quiet()
                self.starting += 1
                try:
                    live = await self._start_one()
                except Exception as exc:  # keep serving creates the slow way meanwhile
                    failures += 1
                    delay = min(60.0, 0.5 * 2 ** failures)
                    log.warning("warm pool %s: starting a sandbox failed (%s); retry in "
                                "%.0f s", self.template, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                finally:
                    self.starting -= 1
                failures = 0
                self._ready.append(live)
                if self._taken:
                    lag = time.monotonic() - self._taken.pop(0)
                    self.refills += 1
                    self.refill_seconds_sum += lag
                    self.last_refill_seconds = lag
            self._wake.clear()
            await self._wake.wait()
