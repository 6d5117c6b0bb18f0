"""Code contexts: each one a Jupyter kernel with its own language, working directory and state.

A context owns one kernel (started through ``jupyter_client``) and a lock: executions sent to
one context run one after another in arrival order (``asyncio.Lock`` is first come, first
served), while different contexts run in parallel. A kernel that dies is replaced on the next
execution; the context keeps its id, and the execution that found it dead says so.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Dict, List, Optional

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from ...errors import InvalidArgumentError, NotFoundError
from .kernelspecs import KERNELS, canonical

log = logging.getLogger("hutch.interpreter")

DEFAULT_CWD = "/home/user"
#: How long a kernel may take to answer its first request before we give up on it.
START_TIMEOUT = 60.0


class Context:
    def __init__(self, contexts: "Contexts", language: str, cwd: str, kernel: str,
                 context_id: Optional[str] = None) -> None:
        self.contexts = contexts
        self.id = context_id or uuid.uuid4().hex
        self.language = language
        self.cwd = cwd
        self.kernel = kernel
        self.lock = asyncio.Lock()
        self.km: Optional[AsyncKernelManager] = None
        self.kc = None
        self._starting: Optional[asyncio.Task] = None
        #: Why the previous kernel went away, told to the next execution (then cleared).
        self.lost: Optional[str] = None

    def describe(self) -> dict:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    # -- kernel lifetime ---------------------------------------------------------------------

    def start_soon(self) -> "asyncio.Task":
        """Start the kernel in the background (idempotent); await the task to be sure."""
        task = self._starting
        if task is None or (task.done() and (self.km is None or task.exception() is not None)):
            self._starting = task = asyncio.ensure_future(self._start())
        return task

    async def ready(self):
        """The kernel client, once the kernel answers (started now if needed)."""
        starting = self.start_soon()    # the start in flight, or a new one if none is
        await asyncio.shield(starting)
        if self.kc is None:
            raise RuntimeError("the kernel did not start")
        return self.kc

    async def _start(self) -> None:
        # Unix sockets rather than TCP on localhost: nothing else in the sandbox can even
        # try the kernel's ports, and the round trip is shorter.
        prefix = str(self.contexts.work / f"kernel-{self.id}")
        km = AsyncKernelManager(kernel_name=self.kernel,
                                kernel_spec_manager=self.contexts.spec_manager,
                                transport="ipc", ip=prefix, connection_file=prefix + ".json")
        await km.start_kernel(cwd=self.cwd, env=self.contexts.kernel_env())
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=START_TIMEOUT)
        except BaseException:
            kc.stop_channels()
            await _quietly(km.shutdown_kernel(now=True))
            raise
        self.km, self.kc = km, kc

    async def alive(self) -> bool:
        return self.km is not None and await self.km.is_alive()

    def exit_code(self) -> Optional[int]:
        provisioner = getattr(self.km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return None if process is None else process.poll()

    async def stop(self) -> None:
        """Shut the kernel down now (state lost)."""
        km, kc = self.km, self.kc
        self.km = self.kc = None
        self._starting = None
        if kc is not None:
            kc.stop_channels()
        if km is not None:
            await _quietly(km.shutdown_kernel(now=True))

    async def restart(self) -> None:
        async with self.lock:
            await self.stop()
            self.lost = None
            await self.ready()

    async def interrupt(self) -> None:
        if self.km is not None:
            await _quietly(self.km.interrupt_kernel())


class Contexts:
    """Every context of the sandbox, plus one default context per language (made on first use;
    the Python one at start-up, so the first ``run_code`` finds its kernel warm)."""

    def __init__(self, work: Path, kernel_dirs: List[str], env: Dict[str, str]) -> None:
        self.work = work
        ksm = KernelSpecManager()
        ksm.kernel_dirs = kernel_dirs + [d for d in ksm.kernel_dirs if d not in kernel_dirs]
        self.spec_manager = ksm
        self.env = dict(env)
        self._all: Dict[str, Context] = {}
        self._defaults: Dict[str, str] = {}

    def kernel_env(self) -> Dict[str, str]:
        return dict(self.env)

    def _kernel_for(self, language: str) -> str:
        names = self.spec_manager.find_kernel_specs()
        for name in KERNELS.get(language, ()):
            if name in names:
                return name
        raise InvalidArgumentError(
            f"language {language!r} has no kernel in this sandbox's template "
            f"(available: {', '.join(self.languages())})")

    def languages(self) -> List[str]:
        names = self.spec_manager.find_kernel_specs()
        return [lang for lang, kernels in KERNELS.items() if any(k in names for k in kernels)]

    def create(self, language: Optional[str], cwd: Optional[str]) -> Context:
        lang = canonical(language)
        if lang is None:
            raise InvalidArgumentError(f"unknown language {language!r}; supported: "
                                       f"{', '.join(self.languages())}")
        cwd = cwd or DEFAULT_CWD
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise InvalidArgumentError(f"cwd must be an absolute path, got {cwd!r}")
        ctx = Context(self, lang, cwd, self._kernel_for(lang))
        self._all[ctx.id] = ctx
        ctx.start_soon()
        return ctx

    def default(self, language: Optional[str]) -> Context:
        lang = canonical(language)
        if lang is None:
            raise InvalidArgumentError(f"unknown language {language!r}; supported: "
                                       f"{', '.join(self.languages())}")
        ctx = self._all.get(self._defaults.get(lang, ""))
        if ctx is None:
            ctx = self.create(lang, DEFAULT_CWD)
            self._defaults[lang] = ctx.id
        return ctx

    def get(self, context_id: str) -> Context:
        ctx = self._all.get(context_id) if isinstance(context_id, str) else None
        if ctx is None:
            raise NotFoundError(f"context {context_id!r} not found")
        return ctx

    def list(self) -> List[Context]:
        return list(self._all.values())

    async def remove(self, context_id: str) -> None:
        ctx = self.get(context_id)
        del self._all[ctx.id]
        for lang, cid in list(self._defaults.items()):
            if cid == ctx.id:
                del self._defaults[lang]
        async with ctx.lock:
            await ctx.stop()

    async def close(self) -> None:
        await asyncio.gather(*(c.stop() for c in self._all.values()), return_exceptions=True)
        self._all.clear()


async def _quietly(awaitable) -> None:
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001 - shutting down a broken kernel must not fail
        log.debug("ignored: %s", exc)


__all__ = ["Context", "Contexts", "NoSuchKernel", "DEFAULT_CWD"]
