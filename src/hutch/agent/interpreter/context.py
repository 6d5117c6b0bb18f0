"""Code contexts: each one a Jupyter kernel with its own language, working directory and state.

A context owns one kernel (its process, :mod:`.kernel`, and the connection to it,
:mod:`.client`) and a lock: executions sent to one context run one after another in arrival
order (``asyncio.Lock`` is first come, first served), while different contexts run in parallel.
A kernel that dies is replaced on the next execution; the context keeps its id, and the
execution that found it dead says so.
"""

from __future__ import annotations

import asyncio
import os
from typing import Dict, List, Optional

from ...errors import InvalidArgumentError, NotFoundError
from . import kernelspecs
from .client import KernelClient
from .kernel import KernelProcess
from .kernelspecs import DEFAULT_CWD, KERNELS, canonical
from .zygote import KernelZygote

#: How long a kernel may take to answer its first request before we give up on it. A kernel
#: is judged alive by its process (not by heartbeats: one starting on a busy host, its sandbox
#: held to its CPU share, would miss their deadline long before it failed to start).
START_TIMEOUT = 60.0


class Context:
    def __init__(self, contexts: "Contexts", language: str, cwd: str, kernel: str,
                 context_id: Optional[str] = None) -> None:
        self.contexts = contexts
        self.id = context_id or os.urandom(16).hex()
        self.language = language
        self.cwd = cwd
        self.kernel = kernel
        self.lock = asyncio.Lock()
        self.km: Optional[KernelProcess] = None
        self.kc: Optional[KernelClient] = None
        self._starting: Optional[asyncio.Task] = None
        #: Why the previous kernel went away, told to the next execution (then cleared).
        self.lost: Optional[str] = None
        #: The sandbox environment the running kernel has (Contexts.env may have moved on).
        self.env: Dict[str, str] = {}

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
        # Launched in a thread: a kernel forked from the zygote waits for the zygote's answer
        # (and the first one for the zygote's start), which the event loop must not.
        km = self.contexts.take_prelaunched(self) or await asyncio.get_running_loop(
            ).run_in_executor(None, self.contexts.launch, self.kernel, self.cwd, self.id)
        kc = KernelClient(km.info)
        try:
            await kc.connect(km.alive, START_TIMEOUT)
        except BaseException:
            kc.close()
            km.stop()
            raise
        self.km, self.kc = km, kc
        self.env = dict(km.launch_env)

    async def alive(self) -> bool:
        """The kernel's process runs and our connection to it holds."""
        return (self.km is not None and self.km.alive()
                and self.kc is not None and self.kc.connected())

    def exit_code(self) -> Optional[int]:
        return None if self.km is None else self.km.exit_code()

    async def stop(self) -> None:
        """Shut the kernel down now (state lost)."""
        km, kc = self.km, self.kc
        self.km = self.kc = None
        self._starting = None
        if kc is not None:
            kc.close()
        if km is not None:
            await asyncio.get_running_loop().run_in_executor(None, km.stop)

    async def restart(self) -> None:
        async with self.lock:
            await self.stop()
            self.lost = None
            await self.ready()

    async def interrupt(self) -> None:
        if self.km is not None:
            self.km.interrupt()


class Contexts:
    """Every context of the sandbox, plus one default context per language (made on first use;
    the Python one at start-up, so the first ``run_code`` finds its kernel warm)."""

    def __init__(self, work: str, kernel_dirs: List[str], env: Dict[str, str],
                 prelaunched: Optional[KernelProcess] = None) -> None:
        self.work = work
        # The default Python kernel, launched first thing at start-up (__main__).
        self._prelaunched = prelaunched
        self.kernel_dirs = list(kernel_dirs)
        self.env = dict(env)
        self._launched: List[KernelProcess] = [prelaunched] if prelaunched is not None else []
        self._all: Dict[str, Context] = {}
        self._defaults: Dict[str, str] = {}
        #: Forks every kernel after the default one (started when the first is asked for).
        self.zygote = KernelZygote()
        self._closed = False

    def kernel_env(self) -> Dict[str, str]:
        return dict(self.env)

    def update_env(self, env: Dict[str, str]) -> None:
        """The sandbox's environment changed (a later ``/init``, as a warm-pool claim sends):
        kernels started from now on get ``env``, and running ones are brought up to it before
        their next execution (:func:`.execution.sync_env`), keeping their state."""
        self.env = dict(env)

    def spec(self, name: str) -> dict:
        return kernelspecs.load(name, self.kernel_dirs)

    def launch(self, kernel: str, cwd: str, name: str) -> KernelProcess:
        """Start a kernel process (tracked, so that closing stops it even mid-start)."""
        km = KernelProcess.from_spec(self.spec(kernel), self.kernel_env(), cwd, self.work, name,
                                     self.zygote)
        self._launched = [k for k in self._launched if k.alive()] + [km]
        if self._closed:                # closed while it started (in a thread)
            km.stop()
            raise RuntimeError("the interpreter is stopping")
        return km

    def prepare_zygote(self) -> bool:
        """Start the kernels' zygote now rather than with the first kernel after the default
        one (a warm-pool sandbox: its first new context then is a fork too). Blocks for the
        zygote's start: call it in a thread."""
        spec = self.spec(kernelspecs.DEFAULT_PYTHON)
        return self.zygote.prepare(list(spec["argv"]), {**self.kernel_env(), **spec["env"]})

    def take_prelaunched(self, ctx: "Context") -> Optional[KernelProcess]:
        km, self._prelaunched = self._prelaunched, None
        if km is not None and ctx.language == "python" and ctx.cwd == DEFAULT_CWD \
                and km.info["kernel_name"] == ctx.id and km.alive():
            return km
        if km is not None:
            km.stop()
        return None

    def _kernel_for(self, language: str) -> str:
        names = kernelspecs.find(self.kernel_dirs)
        for name in KERNELS.get(language, ()):
            if name in names:
                return name
        raise InvalidArgumentError(
            f"language {language!r} has no kernel in this sandbox's template "
            f"(available: {', '.join(self.languages())})")

    def languages(self) -> List[str]:
        names = kernelspecs.find(self.kernel_dirs)
        return [lang for lang, kernels in KERNELS.items() if any(k in names for k in kernels)]

    def create(self, language: Optional[str], cwd: Optional[str],
               context_id: Optional[str] = None) -> Context:
        lang = self._language(language)
        cwd = cwd or DEFAULT_CWD
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise InvalidArgumentError(f"cwd must be an absolute path, got {cwd!r}")
        ctx = Context(self, lang, cwd, self._kernel_for(lang), context_id)
        self._all[ctx.id] = ctx
        ctx.start_soon()
        return ctx

    def _language(self, language: Optional[str]) -> str:
        lang = canonical(language)
        if lang is None:
            raise InvalidArgumentError(f"unknown language {language!r}; supported: "
                                       f"{', '.join(self.languages())}")
        return lang

    def default(self, language: Optional[str], context_id: Optional[str] = None) -> Context:
        lang = self._language(language)
        ctx = self._all.get(self._defaults.get(lang, ""))
        if ctx is None:
            ctx = self.create(lang, DEFAULT_CWD, context_id)
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
        self.kill()

    def kill(self) -> None:
        """Kill every kernel now, started or starting (the interpreter is going away)."""
        for ctx in self._all.values():
            if ctx.kc is not None:
                ctx.kc.close()
        self._closed = True
        self._prelaunched = None
        for km in self._launched:
            km.stop()
        self._launched = []
        self.zygote.close()


__all__ = ["Context", "Contexts", "DEFAULT_CWD"]
