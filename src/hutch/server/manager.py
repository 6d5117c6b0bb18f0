"""The sandbox lifecycle: create, connect, set timeout, kill, expire, reconcile.

States run ``creating → running → killed`` (or ``error`` with a reason). The record is written
before the runtime makes any kernel object, and every deadline is an absolute time in the store,
so the server can stop at any instant: sandboxes keep running while it is down, and on the next
start :meth:`SandboxManager.start` adopts what has a record, destroys what has none and kills
what expired meanwhile.

Expiry is one timer task that sleeps until the nearest deadline (woken early when a deadline
moves closer) rather than a poll every second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hutch.errors import (
    ConflictError,
    HutchError,
    InvalidArgumentError,
    NotFoundError,
    SandboxError,
    SandboxNotFoundError,
    TemplateError,
)
from hutch.runtime.spec import AgentFork, Mount, SandboxSpec
from hutch.server import agent_lib
from hutch.server import audit, startup
from hutch.server.config import Config
from hutch.server.expiry import Reaper
from hutch.server.keys import new_sandbox_id, new_token
from hutch.server.metrics import Metrics
from hutch.server.pool import WarmPool
from hutch.server.quotas import Ledger, Quotas
from hutch.server.reconcile import destroy_quietly, is_alive, maybe_await, reconcile
from hutch.server.store import SandboxRecord, Store
from hutch.server import egress as egress_rules
from hutch.server.upstream import (
    AGENT_SOCKET, CODE_INTERPRETER_PORT, DEFAULT_USER, INTERPRETER_SOCKET, AgentLink, PortLink,
    SocketLink, TunnelLink,
)

log = logging.getLogger("hutch.server")

# Names the E2B SDKs use by default, mapped to hutch's built-in templates.
TEMPLATE_ALIASES = {"code-interpreter-v1": "code-interpreter"}
AGENT_LIB = "/opt/hutch/lib"
CODE_INTERPRETER = "code-interpreter"      # the template service behind port 49999
#: Warm pools refill once no request has begun for this long (see SandboxManager.quiet)...
QUIET_PAUSE = 0.1
#: ...or, on a server that is never that quiet, once they have waited this long.
QUIET_LONGEST = 3.0


@dataclass
class Live:
    """A sandbox this server process currently serves."""

    record: SandboxRecord
    link: AgentLink | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Proxy tasks streaming to/from this sandbox: cancelled on kill so that open streams are
    # dropped at once (no end event), as the SDK expects from a killed sandbox.
    streams: set[asyncio.Task] = field(default_factory=set)
    cpu_sample: tuple[int, float] | None = None   # (cpu ns, monotonic s) of the last metrics
    ports: dict[int, PortLink | SocketLink] = field(default_factory=dict)   # incl. tunnels
    interpreter: bool = False      # its template runs the code interpreter (port 49999)
    oom_kills: int = 0             # the runtime's count when the audit trail last looked

    def port(self, number: int) -> PortLink | None:
        """The pool for a TCP port inside the sandbox (None without a network address)."""
        link = self.ports.get(number)
        if link is None and number == CODE_INTERPRETER_PORT and self.interpreter \
                and self.record.run_dir:
            # hutch's own service: reached through the run dir, whatever the network mode.
            link = self.ports[number] = SocketLink(
                Path(self.record.run_dir) / Path(INTERPRETER_SOCKET).name)
        if link is None and self.record.address:
            link = self.ports[number] = PortLink(self.record.address, number)
        elif link is None and self.record.run_dir:
            # No network: the agent opens the port from inside.
            link = self.ports[number] = TunnelLink(
                Path(self.record.run_dir) / Path(AGENT_SOCKET).name, number,
                self.record.access_token)
        return link

    async def close_links(self) -> None:
        if self.link:
            await self.link.aclose()
        for link in self.ports.values():
            await link.aclose()


class SandboxManager:
    def __init__(self, config: Config, store: Store, runtime: Any, templates: Any) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.templates = templates
        self._live: dict[str, Live] = {}
        self._expiry = Reaper(lambda: self._live, self.kill)
        self._reaper: asyncio.Task | None = None
        # The installed hutch package (agent + protocol), mounted read-only into each sandbox.
        self._agent_lib: Path | None = None   # staged at start: see hutch.server.agent_lib
        self.pools: dict[str, WarmPool] = {}     # template → its warm pool (HUTCH_POOL)
        self._in_flight = 0                     # creates being served right now
        self._creates_idle = asyncio.Event()    # set while none is: pools refill then
        self._creates_idle.set()
        self._last_request = 0.0                # monotonic: when a create or request began
        self._pending_keys: dict[str, asyncio.Future] = {}   # idempotency keys in flight
        self.ledger = Ledger()     # creates in flight and recent creates, for admission
        if store is not None:     # hutch doctor's self-test runs without a store
            store.audit_keep = config.audit_keep
        self._retention: asyncio.Task | None = None
        self._checks: set[asyncio.Task] = set()    # out-of-memory checks in flight
        # Templates tenants built (hutch.templates.custom), set by the app when it has them.
        self.custom: Any = None
        self.prometheus = Metrics()   # GET /metrics (hutch.server.metrics)

    # -- start and stop ----------------------------------------------------------------------

    async def start(self) -> None:
        self._agent_lib = await asyncio.get_running_loop().run_in_executor(
            None, agent_lib.stage, self.config.data_dir)
        await self.reconcile()
        self._reaper = asyncio.create_task(self._expiry.run(), name="hutch-reaper")
        if self.config.audit_retention_days > 0:
            self._retention = asyncio.create_task(
                audit.retain(self.store, self.config.audit_retention_days * 86400.0),
                name="hutch-audit-retention")

    def start_pool(self) -> None:
        """Start filling the warm pools (HUTCH_POOL) in the background."""
        for template, size in self.config.pools.items():
            if template in self.pools:
                continue
            try:
                name = self._resolve(template)
            except HutchError as exc:
                log.warning("warm pool %s not started: %s", template, exc)
                continue
            self.pools[name] = pool = WarmPool(self, name, size)
            pool.start()

    def busy(self) -> None:
        """A request for a sandbox (or a create) begins: see :meth:`quiet`."""
        self._last_request = time.monotonic()

    async def quiet(self, pause: float = QUIET_PAUSE, longest: float = QUIET_LONGEST) -> None:
        """Return once no create is in flight and no request has begun for ``pause``
        seconds, or, past ``longest`` seconds of waiting, as soon as no create is in flight.

        What the pools wait for before each refill. A client that creates a sandbox uses it
        at once (its first command, its first cell), and that sandbox's start-up work is
        what a refill would take the CPU from: a refill started at the create's answer
        made the first command three times slower on two cores. A train of creates is
        served from the pool and the pool refills once it ends; ``longest`` keeps a server
        that is never quiet refilling all the same."""
        began = time.monotonic()
        while True:
            await self._creates_idle.wait()
            now = time.monotonic()
            left = min(self._last_request + pause, began + longest) - now
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def close(self) -> None:
        """Stop serving; sandboxes keep running and are adopted by the next start."""
        for pool in self.pools.values():
            await pool.close()
        for task in (self._reaper, self._retention):
            if task is None:
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        lives = list(self._live.values())
        self._live.clear()
        for live in lives:
            for task in list(live.streams):
                task.cancel()
            await live.close_links()

    async def reconcile(self) -> dict[str, list[str]]:
        """Make the store and the runtime agree (see :mod:`hutch.server.reconcile`)."""
        return await reconcile(self.store, self.runtime, self._adopt)

    async def _adopt(self, rec: SandboxRecord) -> bool:
        link = AgentLink(Path(rec.run_dir or "") / "agent.sock")
        ok = bool(rec.run_dir) and await link.health(timeout=5.0)
        if ok:
            # /init is idempotent: re-sending the stored settings makes sure an agent that
            # restarted while the server was down serves the sandbox's env and token again.
            try:
                user, workdir = self._defaults(self._own_template(rec))
                await link.init(rec.env_vars, rec.access_token, user,
                                default_workdir=workdir)
            except Exception as exc:
                log.warning("re-initialising %s failed: %s", rec.id, exc)
                ok = False
        if not ok:
            await link.aclose()
            self.store.update(rec, state="error", reason="agent unreachable at server start",
                              ended_at=time.time())
            audit.lifecycle(self.store, rec.id, "error",
                            reason="agent unreachable at server start")
            await self._destroy_quietly(rec.id)
            return False
        self._live[rec.id] = Live(record=rec, link=link,
                                  interpreter=self._has_interpreter(rec.template))
        audit.lifecycle(self.store, rec.id, "adopted", reason="server restart")
        # Out-of-memory kills from before are not news (those while the server was down go
        # unrecorded): the trail reports the ones from now on.
        try:
            stats = await maybe_await(self.runtime.stats(rec.id)) or {}
            self._live[rec.id].oom_kills = int(stats.get("oom_kills") or 0)
        except Exception:   # noqa: BLE001 - the runtime cannot tell: count from zero
            pass
        return True

    def _has_interpreter(self, template: str) -> bool:
        try:
            return CODE_INTERPRETER in self.templates.catalog.recipe(template).services
        except Exception:   # noqa: BLE001 - a template no longer in the catalog has none
            return False

    # -- create ------------------------------------------------------------------------------

    async def create(self, template: str, *, idempotency_key: str | None = None,
                     **options: Any) -> tuple[SandboxRecord, dict[str, float]]:
        """Create and start a sandbox; return its record and a timing breakdown (seconds).

        With an ``idempotency_key``, a repeated call (say a client retrying after a lost
        answer) returns the sandbox the first call made instead of a second one."""
        if not idempotency_key:
            return await self._create(template, None, **options)
        pending = self._pending_keys.get(idempotency_key)
        if pending is not None:
            return await asyncio.shield(pending)
        rec = self.store.by_idempotency_key(idempotency_key)
        # A first attempt that failed before its sandbox ever ran (a server stop cut it off,
        # or the runtime refused) handed nothing out: the retry makes the sandbox afresh.
        if rec is not None and not (rec.state == "error" and rec.started_at is None):
            live = self._live.get(rec.id)
            if live is not None and live.record.state == "running":
                return live.record, {"idempotent": 0.0}
            raise ConflictError(f"Idempotency-Key {idempotency_key!r} already created sandbox "
                                f"{rec.id}, which is {rec.state} now")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending_keys[idempotency_key] = future
        try:
            result = await self._create(template, idempotency_key, **options)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else
                                 SandboxError("the first request with this key was cancelled"))
            future.exception()   # retrieved: waiters, if any, get it too
            raise
        finally:
            del self._pending_keys[idempotency_key]

    async def _create(
        self,
        template: str,
        idempotency_key: str | None,
        *,
        timeout: int | None = None,
        metadata: dict[str, str] | None = None,
        env_vars: dict[str, str] | None = None,
        network: str | None = None,
        secure: bool = True,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        owner: str | None = None,
        egress: dict | None = None,
        quotas: Quotas | None = None,
    ) -> tuple[SandboxRecord, dict[str, float]]:
        """``quotas``: the owner's tenant quotas (None: exempt, as the admin key is)."""
        cfg = self.config
        # A template of one's own may carry its sandboxes' default size (build(cpu=, ...)).
        # Checked against the server's limits like a size the create asked for.
        own = self._own(TEMPLATE_ALIASES.get(template, template), owner) or {}
        cpu = own.get("cpu") if cpu is None else cpu
        memory_mb = own.get("memory_mb") if memory_mb is None else memory_mb
        cpu = self._check_size("cpuCount", cpu, cfg.default_cpu, cfg.max_cpu, float)
        memory_mb = self._check_size("memoryMB", memory_mb, cfg.default_memory_mb,
                                     cfg.max_memory_mb, int)
        disk_mb = self._check_size("diskSizeMB", disk_mb, cfg.default_disk_mb,
                                   cfg.max_disk_mb, int)
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        timeout = self._check_timeout(cfg.default_timeout if timeout is None else timeout)
        name = self._resolve(template, owner)
        # Admitted against the server-wide limit and the tenant's quotas with no await in
        # between, counting the creates still in flight: see hutch.server.quotas.
        reservation = self.ledger.admit((live.record for live in self._live.values()), owner,
                                        quotas, cpu, memory_mb, cfg.max_sandboxes)
        self._in_flight += 1
        self._creates_idle.clear()
        self.busy()
        try:
            tmpl = await self.template(name, owner)
            timing["template"] = time.perf_counter() - t0

            net = network or cfg.default_network
            pool = self.pools.get(name)
            if pool is not None and pool.serves(name, net, secure, disk_mb):
                live = pool.take()
                if live is not None:
                    reservation.sandbox_id = live.record.id
                    claimed = await pool.claim(
                        live, template=template, timeout=timeout, metadata=metadata,
                        env_vars=env_vars, idempotency_key=idempotency_key, owner=owner,
                        egress=egress, cpu=cpu, memory_mb=memory_mb, timing=timing)
                    if claimed is not None:
                        timing["pool"] = time.perf_counter() - t0 - timing["template"]
                        timing["total"] = time.perf_counter() - t0
                        self.prometheus.created(claimed.template, "pool", timing["total"])
                        self._created(claimed, timeout, pooled=True)
                        return claimed, timing

            now = time.time()
            rec = SandboxRecord(
                id=new_sandbox_id(), template=name,
                alias=template if template != name else None,
                digest=getattr(tmpl, "digest", None),
                state="creating", created_at=now, end_at=now + timeout,
                cpu=cpu, memory_mb=memory_mb, disk_mb=disk_mb, pids=cfg.default_pids,
                network=net,
                metadata=dict(metadata or {}), env_vars=dict(env_vars or {}),
                access_token=new_token() if secure else None, idempotency_key=idempotency_key,
                owner=owner, egress=egress,
            )
            reservation.sandbox_id = rec.id
            live = await self.boot(rec, tmpl, timing, "running")
            if getattr(tmpl, "start_cmd", None):
                t = time.perf_counter()
                try:
                    await startup.start(live.link, tmpl.start_cmd, tmpl.ready_cmd, tmpl.user,
                                        tmpl.workdir, rec.access_token,
                                        self.config.template_ready_timeout)
                except BaseException as exc:
                    await asyncio.shield(self.kill(rec.id, reason=f"start command: {exc}"))
                    _reraise(exc, "the template's start command failed")
                timing["start_cmd"] = time.perf_counter() - t
            timing["total"] = time.perf_counter() - t0
            self.prometheus.created(name, "cold", timing["total"])
            self.deadline_changed(live.record.end_at)
            self._created(live.record, timeout, pooled=False)
            log.debug("created %s (%s) in %.1f ms: %s", rec.id, name, timing["total"] * 1e3,
                      {k: round(v * 1e3, 2) for k, v in timing.items()})
            return live.record, timing
        finally:
            # The sandbox is live now (and counted as such) or it failed and holds nothing.
            self.ledger.release(reservation)
            self._in_flight -= 1
            if not self._in_flight:
                self._creates_idle.set()

    def _created(self, rec: SandboxRecord, timeout: int, pooled: bool) -> None:
        audit.lifecycle(self.store, rec.id, "created", by=rec.owner, template=rec.template,
                        timeout=timeout, cpu=rec.cpu, memory_mb=rec.memory_mb,
                        disk_mb=rec.disk_mb, network=rec.network, egress=rec.egress,
                        env=sorted(rec.env_vars), metadata=rec.metadata, pooled=pooled)

    async def boot(self, rec: SandboxRecord, tmpl, timing: dict[str, float],
                   state: str) -> Live:
        """Record, start and initialise a sandbox; it ends in ``state`` (running or pooled).

        On any failure (cancellation included) the record says why and nothing is left on
        the host."""
        self.store.insert(rec)
        live = Live(record=rec, interpreter=CODE_INTERPRETER in getattr(tmpl, "services", ()))
        self._live[rec.id] = live
        async with live.lock:
            t1 = time.perf_counter()
            try:
                handle = await self.runtime.create(
                    self._spec(rec, tmpl, background=state == "pooled"))
            except BaseException as exc:
                self._fail(live, f"runtime: {exc}")
                await asyncio.shield(self._destroy_quietly(rec.id))
                _reraise(exc, "could not start the sandbox")
            timing["runtime"] = time.perf_counter() - t1
            timing.update((f"runtime_{step}", seconds)
                          for step, seconds in handle.timings.items() if step != "total")
            rec = live.record = self.store.update(
                rec, run_dir=str(handle.run_dir), address=handle.address)
            t2 = time.perf_counter()
            link = AgentLink(handle.agent_socket)
            user, workdir = self._defaults(tmpl)
            try:
                await link.start(rec.env_vars, rec.access_token, user,
                                 time.monotonic() + self.config.agent_timeout,
                                 default_workdir=workdir)
            except BaseException as exc:
                await link.aclose()
                self._fail(live, f"agent: {exc}")
                await asyncio.shield(self._destroy_quietly(rec.id))
                _reraise(exc, "the sandbox agent did not start")
            timing["agent"] = time.perf_counter() - t2
            timing["agent_init"] = link.ready_after or 0.0
            live.link = link
            live.record = self.store.update(rec, state=state, started_at=time.time())
        return live

    @staticmethod
    def _defaults(tmpl) -> tuple[str, str | None]:
        """Who commands run as, and where, when they do not say: the template's USER and
        WORKDIR for the templates users build; ``user`` in its home for the built-in ones."""
        if tmpl is None:
            return DEFAULT_USER, None
        return getattr(tmpl, "user", None) or DEFAULT_USER, getattr(tmpl, "default_cwd", None)

    def _own_template(self, rec: SandboxRecord):
        """The owner's template a sandbox came from, if it still exists (None: built-in)."""
        if self._own(rec.template, rec.owner) is None:
            return None
        return self.custom.get(rec.owner, rec.template)

    async def discard(self, live: Live, reason: str) -> None:
        """Destroy a sandbox that was never handed out (pooled), recording why."""
        self._live.pop(live.record.id, None)
        live.record = self.store.update(live.record, state="killed", reason=reason[:500],
                                        ended_at=time.time())
        await live.close_links()
        await asyncio.shield(self._destroy_quietly(live.record.id))

    def deadline_changed(self, end_at: float | None = None) -> None:
        """A deadline moved to ``end_at`` (or a sandbox started running): the expiry timer
        looks again if that is sooner than it would anyway."""
        self._expiry.moved(end_at)

    @staticmethod
    def _check_size(name: str, value: Any, default, limit, kind):
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or (kind is int and value != int(value)):
            raise InvalidArgumentError(f"{name} must be a positive "
                                       f"{'integer' if kind is int else 'number'}, got {value!r}")
        if value > limit:
            raise InvalidArgumentError(f"{name} {value} exceeds this server's maximum of {limit}")
        return kind(value)

    def _check_timeout(self, seconds: Any) -> int:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise InvalidArgumentError(f"timeout must be a non-negative number of seconds, "
                                       f"got {seconds!r}")
        if seconds > self.config.max_timeout:
            raise InvalidArgumentError(
                f"timeout {seconds} s exceeds the maximum of {self.config.max_timeout} s")
        return int(seconds)

    def _resolve(self, template: str, owner: str | None = None) -> str:
        """The canonical template name (aliases such as ``code-interpreter-v1`` resolved);
        a name no built-in has may be one of the owner's own templates."""
        name = TEMPLATE_ALIASES.get(template, template)
        if self._own(name, owner) is not None:
            return name
        return self.templates.resolve(name)   # NotFoundError names the known templates

    def _own(self, name: str, owner: str | None) -> dict | None:
        """The record of ``owner``'s template ``name`` (built-in names always win)."""
        if self.custom is None or owner is None:
            return None
        try:
            self.templates.resolve(name)
            return None
        except NotFoundError:
            return self.custom.record(owner, name)

    async def template(self, name: str, owner: str | None = None):
        """The built template (built now if it is not yet)."""
        if self._own(name, owner) is not None:
            tmpl = self.custom.get(owner, name)
            if tmpl is None:
                raise TemplateError(f"template {name} must be built again (a layer of it is "
                                    "gone)")
            forked = getattr(self.runtime, "forks_agent", None)
            layers = tuple(Path(p) for p in tmpl.layers)
            if not self.custom.runnable(tmpl) and not (forked and forked(layers)):
                # Where the agent is forked in from the host it needs no python3 there, only
                # a `sleep` (runtime/zygote.py); where it starts inside, it does.
                raise InvalidArgumentError(
                    f"template {name} has no python3 (and no sleep for a forked agent), which "
                    "hutch's agent needs in every sandbox: add a step that installs it")
            return tmpl
        tmpl = self.templates.get(name)
        if tmpl is None:
            # Not built yet (e.g. code-interpreter on first use): build it now. Slow, but only
            # once; later creates find it built.
            tmpl = await self.templates.ensure(name)
        return tmpl

    def _spec(self, rec: SandboxRecord, tmpl, background: bool = False) -> SandboxSpec:
        env = tmpl.env.items() if isinstance(tmpl.env, dict) else tmpl.env
        env = [(k, v) for k, v in env if k != "PYTHONPATH"]
        env.append(("PYTHONPATH", AGENT_LIB))
        # -S: the agent uses the standard library only, so site's path set-up is skipped.
        # --landlock: it confines itself (and all it starts) to the sandbox's root first.
        args = ("python3", "-S", "-m", "hutch.agent", "--socket", AGENT_SOCKET, "--landlock")
        interpreter = None
        if CODE_INTERPRETER in getattr(tmpl, "services", ()):
            args += ("--interpreter", INTERPRETER_SOCKET)
            interpreter = INTERPRETER_SOCKET
        lib = self._agent_lib or agent_lib.stage(self.config.data_dir)
        return SandboxSpec(
            id=rec.id,
            layers=tuple(Path(p) for p in tmpl.layers),
            args=args,
            env=tuple(env),
            cwd="/",
            cpu=rec.cpu, memory_mb=rec.memory_mb, pids=rec.pids, disk_mb=rec.disk_mb,
            network=rec.network,
            egress=self.egress_policy(rec.egress, rec.network),
            background=background,
            landlock=True,
            mounts=(Mount(lib, f"{AGENT_LIB}/hutch", read_only=True),),
            # The same agent, forked in where the runtime can (runtime/zygote.py).
            agent_fork=AgentFork(lib=lib.parent, lib_inside=AGENT_LIB, socket=AGENT_SOCKET,
                                 interpreter=interpreter),
        )

    @staticmethod
    def egress_policy(egress: dict | None, network: str):
        """The runtime's policy for a stored egress form (None without a network)."""
        return egress_rules.policy_of(egress) if network == "internet" else None

    def _fail(self, live: Live, reason: str) -> None:
        self._live.pop(live.record.id, None)
        live.record = self.store.update(live.record, state="error", reason=reason[:500],
                                        ended_at=time.time())
        if live.record.owner is not None:    # a pool sandbox is nobody's yet
            audit.lifecycle(self.store, live.record.id, "error", reason=reason[:500])
        log.warning("sandbox %s failed: %s", live.record.id, reason)

    # -- queries -----------------------------------------------------------------------------

    def running(self, sandbox_id: str) -> Live:
        """The live sandbox, or SandboxNotFoundError (unknown, killed or expired)."""
        live = self._live.get(sandbox_id)
        if live is None or live.record.state != "running":
            raise SandboxNotFoundError(f"sandbox {sandbox_id!r} not found")
        return live

    def lookup(self, sandbox_id: str) -> Live | None:
        """The live, running sandbox or None; the data plane's hot path."""
        live = self._live.get(sandbox_id)
        if live is None or live.record.state != "running" or live.link is None:
            return None
        return live

    def list(self, **filters) -> tuple[list[SandboxRecord], str | None]:
        return self.store.page(**filters)

    async def metrics(self, sandbox_id: str) -> dict:
        """Current usage in E2B's units: CPU % of the sandbox's quota since the last call
        (since start for the first one), memory and disk in bytes; and how many processes
        the OOM killer took in it so far."""
        live = self.running(sandbox_id)
        rec = live.record
        raw = dict(await maybe_await(self.runtime.stats(sandbox_id)) or {})
        now = time.monotonic()
        cpu_ns = raw.get("cpu_ns")
        pct = 0.0
        if cpu_ns is not None:
            if live.cpu_sample is not None:
                prev_ns, prev_t = live.cpu_sample
            else:
                prev_ns, prev_t = 0, now - max(1e-3, time.time() - (rec.started_at or rec.created_at))
            elapsed = max(1e-6, now - prev_t)
            pct = max(0.0, min(100.0, (cpu_ns - prev_ns) / (elapsed * 1e9 * rec.cpu) * 100))
            live.cpu_sample = (cpu_ns, now)

        def num(key: str, default: int) -> int:
            value = raw.get(key)
            return int(value) if value is not None else default

        return {
            "cpu_used_pct": round(pct, 2),
            "mem_used": num("memory_bytes", 0),
            "mem_total": min(num("memory_limit", rec.memory_mb << 20), rec.memory_mb << 20),
            "mem_cache": num("memory_cache", 0),
            "disk_used": num("disk_used", 0),
            "disk_total": num("disk_total", rec.disk_mb << 20),
            "oom_kills": num("oom_kills", 0),
        }

    # -- changes -----------------------------------------------------------------------------

    async def set_timeout(self, sandbox_id: str, seconds: Any,
                          by: str | None = None) -> SandboxRecord:
        seconds = self._check_timeout(seconds)
        live = self.running(sandbox_id)
        live.record = self.store.update(live.record, end_at=time.time() + seconds)
        audit.lifecycle(self.store, sandbox_id, "timeout_changed", by=by, timeout=seconds,
                        end_at=live.record.end_at)
        self.deadline_changed(live.record.end_at)
        return live.record

    async def connect(self, sandbox_id: str, seconds: Any | None,
                      by: str | None = None) -> SandboxRecord:
        """Attach to a running sandbox; a timeout may extend its life, never shorten it."""
        live = self.running(sandbox_id)
        if seconds is not None:
            seconds = self._check_timeout(seconds)
            end = time.time() + seconds
            if end > live.record.end_at:
                live.record = self.store.update(live.record, end_at=end)
                audit.lifecycle(self.store, sandbox_id, "timeout_changed", reason="connect",
                                by=by, timeout=seconds, end_at=end)
                self.deadline_changed(end)
        return live.record

    async def update_network(self, sandbox_id: str, body: Any,
                             by: str | None = None) -> SandboxRecord:
        """E2B's network update: the sandbox's egress configuration replaced, atomically, in
        force for its next packet (and kept across server restarts)."""
        live = self.running(sandbox_id)
        async with live.lock:
            rec = live.record
            new = egress_rules.update(body, rec.egress, rec.network)
            await self.runtime.set_egress(rec.id, egress_rules.policy_of(new))
            live.record = self.store.update(rec, egress=new)
            audit.lifecycle(self.store, sandbox_id, "network_updated", by=by, egress=new)
        return live.record

    async def kill(self, sandbox_id: str, reason: str = "killed",
                   by: str | None = None, event: str | None = None) -> None:
        """End a sandbox; ``by``: the key that asked, ``event``: what the audit trail calls
        it (default: ``expired`` for a timeout, else ``killed``)."""
        live = self._live.get(sandbox_id)
        if live is None:
            raise SandboxNotFoundError(f"sandbox {sandbox_id!r} not found")
        async with live.lock:
            if self._live.get(sandbox_id) is not live or live.record.state != "running":
                raise SandboxNotFoundError(f"sandbox {sandbox_id!r} not found")
            # Recorded first: if the server dies before the destroy finishes, the next start
            # sees a sandbox without a live record and destroys it as an orphan.
            live.record = self.store.update(live.record, state="killed", reason=reason,
                                            ended_at=time.time())
            audit.lifecycle(self.store, sandbox_id,
                            event or ("expired" if reason == "timeout" else "killed"),
                            reason=reason, by=by)
            del self._live[sandbox_id]
            me = asyncio.current_task()
            for task in list(live.streams):
                if task is not me:     # a proxy request may be what found the sandbox dead
                    task.cancel()
            await live.close_links()
            try:
                # Shielded: a caller that goes away must not leave a half-destroyed sandbox.
                await asyncio.shield(self.runtime.destroy(sandbox_id))
            except Exception as exc:  # recorded killed already; the next start retries
                log.error("destroying %s failed: %s", sandbox_id, exc)
        log.info("sandbox %s killed (%s)", sandbox_id, reason)

    def process_killed(self, sandbox_id: str) -> None:
        """A process of the sandbox ended by a signal: find out (in the background) whether
        the OOM killer sent it, for the audit trail."""
        task = asyncio.create_task(self.check_oom(sandbox_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def check_oom(self, sandbox_id: str) -> bool:
        """Record an ``oom`` lifecycle event if the runtime counts new out-of-memory kills in
        the sandbox since the last look."""
        live = self._live.get(sandbox_id)
        if live is None or not hasattr(self.runtime, "stats"):
            return False
        try:
            count = int((await maybe_await(self.runtime.stats(sandbox_id)) or {})
                        .get("oom_kills") or 0)
        except Exception:   # noqa: BLE001 - gone meanwhile, or the runtime cannot tell
            return False
        if count <= live.oom_kills:
            return False
        audit.lifecycle(self.store, sandbox_id, "oom", oom_kills=count,
                        reason=f"the OOM killer ended {count - live.oom_kills} process(es) "
                               f"at the sandbox's memory limit")
        live.oom_kills = count
        return True

    async def vanished(self, sandbox_id: str) -> bool:
        """Called when a sandbox's agent cannot be reached: if the sandbox itself has stopped
        (its init exited, say after an out-of-memory kill), record that and clean up."""
        if sandbox_id not in self._live or await is_alive(self.runtime, sandbox_id):
            return False
        oom = await self.check_oom(sandbox_id)
        try:
            await self.kill(sandbox_id, reason="out of memory" if oom else
                            "the sandbox stopped by itself", event="stopped")
        except SandboxNotFoundError:
            pass
        return True

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        await destroy_quietly(self.runtime, sandbox_id)

def _reraise(exc: BaseException, what: str) -> None:
    """Raise ``exc`` as a hutch error (cancellation and hutch's own errors pass unchanged)."""
    if isinstance(exc, HutchError) or not isinstance(exc, Exception):
        raise exc
    raise SandboxError(f"{what}: {exc}") from exc
