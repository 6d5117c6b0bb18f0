"""Running nftables scripts: in-process through libnftables, else with the nft command.

Every change to the host's firewall (firewall.py, egress.py) is one nftables transaction, and
some are on hot paths: a sandbox's egress policy before it starts, the addresses learned from
every allowed DNS answer. Starting `nft -f -` costs ~15 ms of process creation for a
transaction the library applies in ~2 ms, so the runtime keeps one library context for the
process and runs its scripts there. A host without the library falls back to the command.

The library is not thread-safe (a context holds caches and output buffers, and the library
keeps some state in globals: the ruleset generation it last saw, an interface cache), and a
transaction blocks for as long as the kernel takes. So calls run one at a time, under one lock,
in one worker thread of their own (ctypes releases the GIL during the call): the event loop
never waits on the kernel, and other work queued on the loop's default executor never delays
a firewall change.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from hutch.errors import RuntimeError_
from hutch.runtime import command

log = logging.getLogger(__name__)

SONAME = "libnftables.so.1"
# The only value nft_ctx_new takes: a context that talks to the kernel (any other value
# makes one that never opens its netlink socket). The output flags stay at the command's
# defaults (0): scripts are applied, and listings are read for their status only.
NFT_CTX_DEFAULT = 0
NETLINK_NETFILTER = 12

# Signals a thread cannot usefully block: faults are delivered to the thread that caused them.
_FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT,
           signal.SIGTRAP, signal.SIGSYS}


def _quiet() -> None:
    """The worker thread takes no signals: one delivered to it during a transaction would
    interrupt the library's wait for the kernel's answer, failing the transaction
    (Python runs its handlers in the main thread anyway)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _FAULTS)


_lock = threading.Lock()
_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nftables", initializer=_quiet)


def _fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _failed(error: str) -> RuntimeError_:
    return RuntimeError_(f"nft failed: {error.strip()}")


class Context:
    """One libnftables context, made once and reused for every script.

    Scripts are handed over as a file (a memfd), as `nft -f` does: with a file the library's
    error messages quote the line at fault, while for a script passed as a string this
    version quotes the script's first line under every error."""

    def __init__(self, library: str | None = None) -> None:
        """Load the library and make the context; OSError when it cannot be used here."""
        lib = ctypes.CDLL(library or ctypes.util.find_library("nftables") or SONAME)
        try:
            lib.nft_ctx_new.argtypes = (ctypes.c_uint32,)
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_free.argtypes = (ctypes.c_void_p,)
            lib.nft_ctx_free.restype = None
            for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                getattr(lib, name).argtypes = (ctypes.c_void_p,)
                getattr(lib, name).restype = ctypes.c_int
            for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                # c_char_p copies the text out at once: the library reuses the buffer.
                getattr(lib, name).argtypes = (ctypes.c_void_p,)
                getattr(lib, name).restype = ctypes.c_char_p
            lib.nft_run_cmd_from_filename.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
            lib.nft_run_cmd_from_filename.restype = ctypes.c_int
        except AttributeError as exc:
            raise OSError(f"{library or SONAME}: {exc}") from exc
        # The library ends the whole process when it cannot open its netlink socket, so
        # that is tried here first (an OSError then means: use the command).
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER).close()
        with _lock:
            before = _fds()
            ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
            if not ctx:
                raise OSError("nft_ctx_new failed")
            # Its socket is opened without close-on-exec: no program the server starts may
            # inherit a handle on the host's firewall.
            for fd in _fds() - before:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
            if lib.nft_ctx_buffer_output(ctx) or lib.nft_ctx_buffer_error(ctx):
                lib.nft_ctx_free(ctx)
                raise OSError("cannot buffer libnftables output")
        self._lib, self._ctx = lib, ctx

    def _run(self, script: str) -> tuple[int, str, str]:
        data = script.encode()
        with _lock:
            if not self._ctx:
                raise RuntimeError_("nft failed: the libnftables context is closed")
            fd = os.memfd_create("nftables", os.MFD_CLOEXEC)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                path = f"/proc/self/fd/{fd}".encode()
                rc = self._lib.nft_run_cmd_from_filename(self._ctx, path)
            finally:
                os.close(fd)
            # Reading a buffer empties it; both are read after every command, so that nothing
            # one command wrote (its listing, its errors) shows in the next one's.
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def run_sync(self, script: str) -> str:
        """Apply ``script`` as one transaction (blocking); its output, or RuntimeError_ with
        nft's own message."""
        rc, out, err = self._run(script)
        if rc != 0:
            raise _failed(err)
        return out

    async def run(self, script: str) -> str:
        """:meth:`run_sync` in the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(_worker, self.run_sync, script)

    def close(self) -> None:
        with _lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


class Command:
    """The nft program, one process per script: for hosts without the library."""

    async def run(self, script: str) -> str:
        done = await command.run(["nft", "-f", "-"], input=script.encode(), stdout=command.PIPE)
        if done.returncode != 0:
            raise _failed(done.stderr.decode(errors="replace"))
        return done.stdout.decode(errors="replace")

_backend: Context | Command | None = None


def backend() -> Context | Command:
    """The process's way to run scripts: the library when it loads, else the command."""
    global _backend
    if _backend is None:
        try:
            _backend = Context()
        except OSError as exc:
            log.debug("libnftables cannot be used (%s): running the nft command instead", exc)
            _backend = Command()
    return _backend
