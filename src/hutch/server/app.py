"""The server assembled: store, runtime, templates, lifecycle, and one ASGI app on one port.

The ASGI entry sends each request either to the data plane (it names a sandbox, by headers or
by host) or to the control plane. Start-up order matters: the runtime starts and the store is
reconciled with what runs *before* the port opens, so no request sees a half-known world; the
``base`` template is ensured before listening so the first create is fast. Then the isolation
self-test (:mod:`hutch.server.selftest`) runs one probe sandbox; a failed check stops the start
unless ``HUTCH_ALLOW_DEGRADED`` says to serve anyway, marked degraded.

Stopping the server leaves every sandbox running: the next start adopts them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import uvicorn

from hutch.errors import HutchError
from hutch.server import heap, http_limits, selftest
from hutch.server.config import Config
from hutch.server.keys import ensure_admin_key
from hutch.server.manager import SandboxManager
from hutch.server.proxy import ABORT_LOG_MESSAGE, DataPlane, route
from hutch.server.reconcile import maybe_await
from hutch.server.routes import ControlPlane
from hutch.server.store import Store
from hutch.server.websocket import WebSocketPlane

log = logging.getLogger("hutch.server")


def build_runtime(config: Config):
    from hutch.runtime.local import LocalRuntime
    return LocalRuntime(config.state_dir, instance=config.instance, subnet=config.subnet,
                        oci_runtime=config.oci_runtime, uid_base=config.uid_base,
                        max_connections=config.egress_max_connections,
                        rate_bytes=config.egress_rate_mbit * 125_000,
                        proxy_port=config.egress_proxy_port, fork_agents=config.agent_fork)


def build_templates(config: Config):
    from hutch.templates import TemplateStore
    return TemplateStore(config.templates_dir, uid_base=config.uid_base,
                         trust_host_cas=config.trust_host_cas)


class HutchApp:
    """The ASGI application: data plane first (cheap header check), else the control plane."""

    def __init__(self, config: Config, manager: SandboxManager, store: Store,
                 degraded: tuple[str, ...] = ()) -> None:
        self.domain = config.domain
        self.data = DataPlane(manager)
        self.sockets = WebSocketPlane(manager)
        self.control = ControlPlane(manager, store, client_id=config.instance,
                                    degraded=degraded).app()
        self._degraded = ",".join(degraded).encode()

    async def __call__(self, scope, receive, send) -> None:
        if self._degraded:
            send = self._marking(send)
        if scope["type"] == "websocket":
            target = route(scope, self.domain)
            if target is not None:
                return await self.sockets(scope, receive, send, *target)
            await receive()
            return await send({"type": "websocket.close", "code": 1008})  # no control-plane ws
        if scope["type"] != "http":
            return   # lifespan is off: start-up and shut-down happen around uvicorn
        target = route(scope, self.domain)
        if target is not None:
            return await self.data(scope, receive, send, *target)
        await self.control(scope, receive, send)

    def _marking(self, send):
        """``send`` that adds the failed self-test checks to every response's head."""
        header = (b"hutch-degraded", self._degraded)

        async def marked(message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)
        return marked


async def open_store(path, runtime: Any, instance: str) -> Store:
    """Open the sandbox store, refusing to start when it cannot be trusted.

    Start-up reconciliation destroys every sandbox without a live record, so a store that
    cannot be read, or one that is missing or empty while sandboxes of this instance run
    (deleted, or the data dir pointed elsewhere), would have every sandbox destroyed. Both
    stop the start with a message naming the file, before anything on the host is touched."""
    fresh = not path.exists() or (path.is_file() and path.stat().st_size == 0)
    if fresh:
        found = await maybe_await(runtime.list())
        if found:
            raise HutchError(
                f"the sandbox store {path} is missing or empty, but {len(found)} sandbox(es) "
                f"of instance {instance!r} exist on this host ({' '.join(found[:5])}"
                f"{' ...' if len(found) > 5 else ''}). Refusing to start: a new store would "
                f"make them orphans and destroy them. Restore the store, or remove those "
                f"sandboxes first; see 'Crash recovery' in docs/operations.md.")
    try:
        if not fresh:
            _check_store(path)
        return Store(path)
    except (sqlite3.Error, OSError) as exc:
        raise HutchError(
            f"cannot read the sandbox store {path}: {exc}. Refusing to start; no sandbox "
            f"was touched. Restore the file (or fix its permissions) and start again; see "
            f"'Crash recovery' in docs/operations.md.") from None


def _check_store(path) -> None:
    """SQLite opens most broken files without complaint and fails only on the page it reads:
    check them all (``quick_check`` reads every page, in milliseconds for a store this size)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        db.close()
    if verdict != "ok":
        raise sqlite3.DatabaseError(f"the file is damaged ({verdict})")


def _compile_package() -> None:
    import compileall
    package = Path(__file__).resolve().parent.parent
    for sub in ("agent", "protocol"):
        compileall.compile_dir(package / sub, quiet=2)
    compileall.compile_file(package / "__init__.py", quiet=2)
    compileall.compile_file(package / "errors.py", quiet=2)


class _DropAbortNoise(logging.Filter):
    """Streams of a killed sandbox end abruptly on purpose; that is not a server error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != ABORT_LOG_MESSAGE


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, told to cut open streams as soon as it starts shutting down.

    Left alone it would wait for every open stream (a background command's output can stay
    open for hours) before exiting.
    """

    def __init__(self, config: uvicorn.Config, on_stop) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    async def shutdown(self, sockets=None) -> None:
        self._on_stop()
        await super().shutdown(sockets=sockets)

    @contextmanager
    def capture_signals(self):
        # uvicorn's own version re-raises the signal once it has stopped, which would kill
        # the process before the server's own clean-up runs.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


class Server:
    """Everything one ``hutch serve`` runs: :meth:`start`, then :meth:`serve` until a stop
    signal, then :meth:`close` (see :func:`run`)."""

    def __init__(self, config: Config, runtime: Any = None, templates: Any = None) -> None:
        self.config = config
        self.runtime = runtime if runtime is not None else build_runtime(config)
        self.templates = templates if templates is not None else build_templates(config)
        self.store: Store | None = None
        self.manager: SandboxManager | None = None
        self.admin_key_created = False
        self.selftest: list[selftest.Check] = []
        self.degraded: tuple[str, ...] = ()   # failed self-test checks, when serving anyway

    async def start(self, progress: Any = None) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        # Traversable but not listable: the sandboxes' mapped root must reach its rootfs under
        # here, while the store and the admin key stay 0600.
        cfg.data_dir.chmod(0o711)
        self.store = await open_store(cfg.db_path, self.runtime, cfg.instance)
        self.admin_key_created = ensure_admin_key(self.store, cfg.admin_key_path)
        # Every sandbox runs the agent from this package, read-only: compile it once here so
        # no sandbox pays for compiling it at start.
        await asyncio.to_thread(_compile_package)
        if hasattr(self.runtime, "on_egress"):
            self.runtime.on_egress = self.store.add_egress     # the egress log
        await self.runtime.start()
        self.manager = SandboxManager(cfg, self.store, self.runtime, self.templates)
        from hutch.templates.custom import CustomTemplates
        from hutch.templates.images import Images
        images = Images(self.templates.root / "images", uid_base=cfg.uid_base,
                        insecure=tuple(r.strip() for r in cfg.insecure_registries.split(",")
                                       if r.strip()),
                        auth_file=Path(cfg.registry_auth) if cfg.registry_auth else None)
        self.manager.custom = CustomTemplates(self.templates, self.runtime,
                                              cpu=cfg.default_cpu, memory_mb=cfg.max_memory_mb,
                                              disk_mb=cfg.max_disk_mb, images=images)
        await self.manager.start()
        await self.templates.ensure("base", progress=progress)
        await self._self_test()
        self.manager.start_pool()

    async def _self_test(self) -> None:
        """Prove the containment on this host with one probe sandbox before serving."""
        from hutch.runtime.local import LocalRuntime
        if not isinstance(self.runtime, LocalRuntime):
            return   # an injected runtime (tests) has no host side to look at
        checks, timing = await selftest.self_test(self.config, self.manager, self.runtime,
                                                  self.templates)
        self.selftest = checks
        failed = selftest.failed(checks)
        log.info("isolation self-test: %s in %.0f ms (%s)",
                 "failed " + ", ".join(failed) if failed else "passed",
                 timing.get("total", 0) * 1e3,
                 ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in timing.items()
                           if k != "total"))
        if not failed:
            return
        report = "\n".join(f"  {c.name}: {c.detail}" for c in checks if not c.ok)
        if not self.config.allow_degraded:
            raise HutchError(f"the isolation self-test failed, refusing to serve "
                             f"(HUTCH_ALLOW_DEGRADED=true serves anyway):\n{report}")
        self.degraded = tuple(failed)
        log.warning("serving DEGRADED (HUTCH_ALLOW_DEGRADED): failed self-test checks:\n%s",
                    report)

    async def close(self) -> None:
        if self.manager:
            await self.manager.close()
        with suppress(Exception):
            await self.runtime.close()
        if self.store:
            self.store.close()

    def asgi(self) -> HutchApp:
        assert self.manager is not None and self.store is not None
        return HutchApp(self.config, self.manager, self.store, self.degraded)

    async def serve(self, on_ready=None) -> None:
        """Listen until a stop signal; the caller has called :meth:`start`."""
        logging.getLogger("uvicorn.error").addFilter(_DropAbortNoise())
        app = self.asgi()
        uconfig = uvicorn.Config(
            app, host=self.config.host, port=self.config.port,
            http=http_limits.protocol(self.config.http_head_timeout),
            ws="websockets-sansio", lifespan="off", log_level=self.config.log_level,
            access_log=False,
            timeout_keep_alive=75, server_header=False, date_header=False,
            timeout_graceful_shutdown=10,
        )
        userver = _Uvicorn(uconfig, on_stop=app.data.drop_all)
        if on_ready is not None:
            async def announce():
                while not userver.started and not userver.should_exit:
                    await asyncio.sleep(0.01)
                if userver.started:
                    on_ready(userver)
            watcher = asyncio.create_task(announce())
        try:
            await userver.serve()
        finally:
            if on_ready is not None:
                watcher.cancel()


async def run(config: Config, progress: Any = None, on_ready=None) -> None:
    """Start, serve until SIGINT/SIGTERM, stop (leaving the sandboxes running)."""
    heap.keep_freed_memory()
    server = Server(config)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    # Until uvicorn installs its own handlers, a stop signal cancels start-up (which may be a
    # long first template build) cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main.cancel)
    try:
        await server.start(progress=progress)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.serve(on_ready=on_ready)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
