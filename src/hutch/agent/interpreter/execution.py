"""One execution: a cell sent to a context's kernel, its IOPub messages streamed back as lines.

The lines go out as the kernel produces them (the HTTP layer writes each one as it comes), so a
cell that prints, sleeps and prints again delivers the first chunk before the second exists.
The cell's end is the kernel's ``status: idle`` for our request. Three things can cut it short:

* the execution's deadline: the kernel is interrupted (KeyboardInterrupt inside, the context and
  its variables stay); if it does not come back promptly it is restarted (state lost, said so);
* the kernel dying (``os._exit``, a crash, the OOM killer): reported as an error; the context
  gets a fresh kernel on its next execution;
* the client going away: the kernel is interrupted, so nothing keeps running for nobody.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Dict, List, Optional

from . import outputs
from .client import Empty
from .context import Context

#: Stream output (stdout + stderr) one execution may send; beyond it a marker and no more.
OUTPUT_LIMIT = 16 * 1024 * 1024
#: After an interrupt, how long the kernel gets to report idle before it is restarted.
INTERRUPT_GRACE = 5.0
#: How often a waiting execution checks that its kernel is still alive.
POLL = 1.0


def env_snippets(language: str, env: Dict[str, str]) -> Optional[tuple]:
    """Code that sets ``env`` in a kernel and code that puts the old values back."""
    if not env:
        return None
    if language == "python":
        data = json.dumps(env)
        setup = ("import os as _hutch_os, json as _hutch_json\n"
                 f"_hutch_env = _hutch_json.loads({data!r})\n"
                 "_hutch_saved = {k: _hutch_os.environ.get(k) for k in _hutch_env}\n"
                 "_hutch_os.environ.update(_hutch_env)\n")
        restore = ("for _k, _v in _hutch_saved.items():\n"
                   "    if _v is None: _hutch_os.environ.pop(_k, None)\n"
                   "    else: _hutch_os.environ[_k] = _v\n"
                   "del _hutch_saved, _hutch_env, _hutch_os, _hutch_json, _k, _v\n")
        return setup, restore
    if language == "bash":
        setup, restore = [], []
        for k, v in env.items():
            quoted = "'" + v.replace("'", "'\\''") + "'"
            setup.append(f'if [ -n "${{{k}+x}}" ]; then _hutch_old_{k}="${k}"; '
                         f"_hutch_had_{k}=1; else _hutch_had_{k}=0; fi; export {k}={quoted}")
            restore.append(f'if [ "$_hutch_had_{k}" = 1 ]; then export {k}="$_hutch_old_{k}"; '
                           f"else unset {k}; fi; unset _hutch_old_{k} _hutch_had_{k}")
        return "\n".join(setup), "\n".join(restore)
    if language == "javascript":
        data = json.dumps(env)
        setup = (f"globalThis.__hutchEnv = {data}; globalThis.__hutchSaved = {{}};"
                 "for (const k of Object.keys(__hutchEnv)) { __hutchSaved[k] = process.env[k];"
                 " process.env[k] = __hutchEnv[k]; } undefined")
        restore = ("for (const k of Object.keys(__hutchSaved)) { if (__hutchSaved[k] === "
                   "undefined) delete process.env[k]; else process.env[k] = __hutchSaved[k]; }"
                   " delete globalThis.__hutchEnv; delete globalThis.__hutchSaved; undefined")
        return setup, restore
    return None


#: Variables a running program reads only as it starts (the interpreter's own settings, the
#: dynamic linker's, the thread pools numerical libraries size when they are imported): a
#: change to one of these restarts the kernel rather than being set in it.
STARTUP_ONLY = ("PYTHON", "LD_", "NODE_", "OMP_", "OPENBLAS_", "MKL_", "NUMEXPR_",
                "MPLBACKEND")


def env_changes(language: str, old: Dict[str, str], new: Dict[str, str]) -> Optional[str]:
    """Code that turns a running kernel's environment ``old`` into ``new``: "" when they are
    equal, None when only a restart can (a start-up-only variable, or a language without
    an environment snippet)."""
    changed = {k: v for k, v in new.items() if old.get(k) != v}
    removed = [k for k in old if k not in new]
    if not changed and not removed:
        return ""
    if any(k.startswith(STARTUP_ONLY) for k in [*changed, *removed]):
        return None
    if language == "python":
        return ("import os as _hutch_os, json as _hutch_json\n"
                f"_hutch_os.environ.update(_hutch_json.loads({json.dumps(changed)!r}))\n"
                f"for _k in {removed!r}: _hutch_os.environ.pop(_k, None)\n"
                "del _hutch_os, _hutch_json\n" + ("del _k\n" if removed else ""))
    if language == "bash":
        lines = [f"export {k}='" + v.replace("'", "'\\''") + "'" for k, v in changed.items()]
        return "\n".join(lines + [f"unset {k}" for k in removed])
    if language == "javascript":
        return (f"Object.assign(process.env, {json.dumps(changed)}); "
                f"for (const k of {json.dumps(removed)}) delete process.env[k]; undefined")
    return None


async def sync_env(ctx: Context) -> None:
    """Bring ``ctx``'s running kernel to the sandbox's current environment (the caller holds
    its lock and has its kernel ready): set in place, so its state and imports are kept, or
    by a restart where setting cannot work (then the state is lost, as for a fresh kernel)."""
    target = ctx.contexts.kernel_env()
    code = env_changes(ctx.language, ctx.env, target)
    if code == "":
        return
    if code is None:
        await ctx.stop()
        await ctx.ready()
        return
    await _quiet(ctx, code)
    ctx.env = target


async def _quiet(ctx: Context, code: str, timeout: float = 30.0) -> None:
    """Run bookkeeping code (env set-up) silently and wait for it to finish."""
    kc = ctx.kc
    msg_id = kc.execute(code, silent=True, store_history=False, allow_stdin=False,
                        stop_on_error=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await kc.get_iopub_msg(timeout=POLL)
        except Empty:
            if not await ctx.alive():
                return
            continue
        if (msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle"):
            return


async def warm(ctx: Context, modules: List[str]) -> None:
    """Start ``ctx``'s kernel and import ``modules`` in it, silently and without binding any
    name in the user's namespace (a module that fails to import is skipped): the first cell
    of a sandbox handed out from the warm pool then finds them in ``sys.modules``. Silent
    executions do not count, so that cell is still execution 1."""
    async with ctx.lock:
        await ctx.ready()
        await sync_env(ctx)
        await _quiet(ctx, "def _hutch_warm():\n"
                          "    import importlib\n"
                          f"    for name in {list(modules)!r}:\n"
                          "        try:\n"
                          "            importlib.import_module(name)\n"
                          "        except Exception:\n"
                          "            pass\n"
                          "_hutch_warm()\n"
                          "del _hutch_warm\n", timeout=120.0)


async def run(ctx: Context, code: str, env: Dict[str, str],
              timeout: Optional[float]) -> AsyncIterator[Dict[str, Any]]:
    """Execute ``code`` in ``ctx`` and yield the stream's lines, ``end_of_execution`` last.
    Holds the context's lock throughout: executions of one context never overlap."""
    async with ctx.lock:
        if ctx.lost is not None:
            yield outputs.stream("stderr", f"[{ctx.lost}]\n")
            ctx.lost = None
        try:
            await ctx.ready()
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot start is the answer
            yield outputs.error("KernelStartError", f"the {ctx.language} kernel did not "
                                f"start: {exc}", [])
            yield outputs.END
            return
        await sync_env(ctx)
        snippets = env_snippets(ctx.language, env)
        if snippets:
            await _quiet(ctx, snippets[0])
        try:
            async for line in _execute(ctx, code, timeout):
                yield line
        finally:
            if snippets and ctx.kc is not None and ctx.lost is None:
                await asyncio.shield(_quiet(ctx, snippets[1]))
    yield outputs.END


async def _execute(ctx: Context, code: str, timeout: Optional[float]):
    kc = ctx.kc
    msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
    deadline = None if not timeout else time.monotonic() + timeout
    sent = 0
    truncated = False
    errored = False
    finished = False
    try:
        while True:
            wait = POLL if deadline is None else max(0.0, min(POLL, deadline - time.monotonic()))
            try:
                msg = await kc.get_iopub_msg(timeout=wait)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    async for line in _timed_out(ctx, msg_id, timeout):
                        yield line
                    finished = True
                    return
                if not await ctx.alive():
                    code_ = ctx.exit_code()
                    await ctx.stop()
                    ctx.lost = ("the previous kernel died; this is a new kernel, and the "
                                "context's earlier state is gone")
                    yield outputs.error(
                        "KernelDiedError",
                        f"the {ctx.language} kernel died while running this code "
                        f"(exit status {code_}; os._exit, a crash or running out of memory); "
                        "its state is lost and the next execution starts a new kernel", [])
                    finished = True
                    return
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue   # left over from an earlier, interrupted execution
            kind = msg["msg_type"]
            if kind == "status":
                if msg["content"].get("execution_state") == "idle":
                    finished = True
                    if not errored:
                        line = await _reply_error(kc, msg_id)
                        if line is not None:
                            yield line
                    return
                continue
            line = outputs.translate(msg)
            if line is None:
                continue
            if line["type"] in ("stdout", "stderr"):
                if truncated:
                    continue
                room = OUTPUT_LIMIT - sent
                sent += len(line["text"])
                if sent > OUTPUT_LIMIT:
                    truncated = True
                    if room > 0:
                        yield dict(line, text=line["text"][:room])
                    line = outputs.stream(
                        "stderr", f"\n[output truncated: this execution printed more than "
                                  f"{OUTPUT_LIMIT // 2**20} MiB; the rest was dropped]\n")
            elif line["type"] == "error":
                errored = True
            yield line
    finally:
        if not finished:
            # The client went away mid-cell: stop the work it no longer waits for.
            await asyncio.shield(ctx.interrupt())


async def _reply_error(kc, msg_id: str) -> Optional[Dict[str, Any]]:
    """Kernels such as bash's report a failed cell only in the shell reply: read it."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            reply = await kc.get_shell_msg(timeout=max(0.0, deadline - time.monotonic()))
        except Empty:
            return None
        if reply.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        content = reply.get("content", {})
        if content.get("status") == "error":
            return outputs.error(content.get("ename", "Error"), content.get("evalue", ""),
                                 content.get("traceback", []))
        return None
    return None


async def _timed_out(ctx: Context, msg_id: str, timeout: float):
    """Interrupt the cell; keep the kernel if it comes back, replace it if not."""
    await ctx.interrupt()
    kc = ctx.kc
    deadline = time.monotonic() + INTERRUPT_GRACE
    while time.monotonic() < deadline:
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.0, deadline - time.monotonic()))
        except Empty:
            break
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind in ("stream", "display_data", "execute_result"):
            # Output the cell made before the interrupt reached it, still on its way. The
            # grace is the kernel's: time the client takes to read is added back to it.
            handed = time.monotonic()
            yield outputs.translate(msg)
            deadline += time.monotonic() - handed
        elif kind == "status" and msg["content"].get("execution_state") == "idle":
            yield outputs.error(
                "TimeoutError", f"execution timed out after {timeout:g} s; the kernel was "
                "interrupted and the context's state is kept", [])
            return
    await ctx.stop()
    ctx.lost = ("the previous kernel did not stop when interrupted and was restarted; the "
                "context's earlier state is gone")
    yield outputs.error(
        "TimeoutError", f"execution timed out after {timeout:g} s and the kernel did not "
        "respond to an interrupt; it was restarted and the context's state is lost", [])
