"""The kernels' zygote, from the interpreter's side: started when a sandbox needs a second
kernel, then asked for a fork of itself for each kernel after that.

Starting a kernel is a new Python that imports ipykernel, IPython, pyzmq and tornado, then
sets the kernel up: about 150 ms on a small host, 100 of them the imports. The zygote
(kernel_zygote.py) is one process of the template's Python that has made those imports; a
kernel forked from it only sets itself up (a new context's kernel ready in about 40 ms).

It is started lazily. The default Python kernel starts at ``/init`` as before (a zygote
first would only add itself to that start), and a sandbox that never needs another kernel
never holds the zygote's memory (about 16 MiB PSS; a fork shares part of its pages with the
zygote, about 18 MiB against a started kernel's 30, so a few forks pay it back). The first
kernel after the default one (a new context, another language, a restart) starts the zygote
and is its first fork; every later one is a fork. A warm-pool sandbox has it started ahead
(:meth:`KernelZygote.prepare`).

A kernel is forked only where the fork is the kernel the spec would have started: one of
hutch's own specs (the template's Python running ``kernelspecs.LAUNCH``), and an environment
the zygote's matches in everything Python reads as it starts (:func:`start_up`). A change
there (a warm-pool claim's env vars, say) starts a new zygote; so does a change on disk
that a new Python would see (``pip install``, ``pip install --upgrade ipykernel``: before
each fork the zygote checks its path's directories and those it imported from). Whatever the zygote cannot do, the kernel is started
the usual way, so a zygote that fails costs only its own start.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import threading
from typing import Dict, List, Optional

from . import kernelspecs

log = logging.getLogger("hutch.agent")

#: How long the zygote may take to make its imports (a sandbox short of CPU is slow).
START_TIMEOUT = 60.0
#: How long a fork may take to be answered.
FORK_TIMEOUT = 30.0
#: Prefixes and names of the variables Python (and the dynamic linker under it) reads as it
#: starts, before any kernel code: a fork inherits what the zygote made of them. Of the
#: locale, Python's start sets only the character type (LC_CTYPE, from LC_ALL, LC_CTYPE or
#: LANG), and the time zone its time module reads on import is read again in each fork.
_START_UP = ("PYTHON", "LD_")
_START_UP_NAMES = ("LC_ALL", "LC_CTYPE", "LANG", "HOME")


def start_up(python: str, env: Dict[str, str]) -> tuple:
    """What a zygote must have started with for a kernel of ``env`` to be forked from it. The
    agent library's own entry in PYTHONPATH (the JavaScript kernel's spec adds it) does not
    count: it holds only hutch's package, and the fork puts the kernel's entries in place."""
    out = [("", python)]
    for k, v in sorted(env.items()):
        if k == "PYTHONPATH":
            v = os.pathsep.join(p for p in v.split(os.pathsep) if p != kernelspecs.LIB)
            if not v:
                continue
        if k.startswith(_START_UP) or k in _START_UP_NAMES:
            out.append((k, v))
    return tuple(out)


def _forkable(argv: List[str]) -> bool:
    """A command line of hutch's own specs: the template's Python running the launcher."""
    return len(argv) >= 3 and argv[1:3] == ["-c", kernelspecs.LAUNCH]


class KernelZygote:
    def __init__(self) -> None:
        self._lock = threading.Lock()       # one request at a time (launches run in threads)
        self._current: Optional[_Process] = None
        self._all: List[_Process] = []      # the current one and retired ones with kernels
        self._closed = False

    def fork(self, argv: List[str], env: Dict[str, str], cwd: str) -> Optional["Forked"]:
        """A kernel of ``argv`` forked in ``env`` and ``cwd``; None if it must be started."""
        if not _forkable(argv):
            return None
        request = {"code": argv[2], "args": argv[3:], "env": env, "cwd": cwd}
        with self._lock:
            for _ in range(2):              # a second time after a {"stale"} zygote
                zygote = self._ready(argv[0], env)
                if zygote is None:
                    return None
                reply = zygote.ask(request, FORK_TIMEOUT)
                if reply is not None and "pid" in reply:
                    return Forked(int(reply["pid"]), zygote)
                if reply is not None and "stale" in reply:
                    log.info("kernel zygote: %s changed since its imports; starting a new one",
                             reply["stale"])
                    self._retire()
                    continue
                log.warning("kernel zygote: %s; the kernel starts instead",
                            (reply or {}).get("error", "no answer"))
                if reply is None:
                    self._retire()
                return None
        return None

    def prepare(self, argv: List[str], env: Dict[str, str]) -> bool:
        """Start the zygote for kernels of ``argv`` and ``env`` now, if none is running for
        them (a warm-pool sandbox, whose first new context then forks at once)."""
        if not _forkable(argv):
            return False
        with self._lock:
            return self._ready(argv[0], env) is not None

    def _ready(self, python: str, env: Dict[str, str]) -> Optional["_Process"]:
        """The running zygote for kernels of ``python`` and ``env``, started if need be
        (the caller holds the lock)."""
        if self._closed:
            return None
        key = start_up(python, env)
        zygote = self._current
        if zygote is not None and zygote.running() and zygote.key == key:
            return zygote
        self._retire()
        zygote = _Process.start(python, env, key)
        if zygote is None:
            return None
        self._all = [z for z in self._all if z.running()] + [zygote]
        if self._closed:
            zygote.kill()
            return None
        self._current = zygote
        return zygote

    def close(self) -> None:
        """End every zygote now (the interpreter is going away; its kernels were killed).
        Without the lock: a fork in flight then gets no answer and its kernel starts."""
        self._closed = True
        self._current = None
        for zygote in list(self._all):
            zygote.kill()

    def _retire(self) -> None:
        # The kernels it forked keep running (it stays their parent until the last ends).
        zygote, self._current = self._current, None
        if zygote is not None:
            zygote.retire()


class _Process:
    """One zygote process: its requests pipe, a thread reading its answers and the exit
    statuses of the kernels it reaps."""

    def __init__(self, proc: subprocess.Popen, key: tuple) -> None:
        self.proc = proc
        self.key = key
        self._replies: "queue.Queue[Optional[dict]]" = queue.Queue()
        self._exits: Dict[int, int] = {}
        self._changed = threading.Condition()
        self._ended = False

    @classmethod
    def start(cls, python: str, env: Dict[str, str], key: tuple) -> Optional["_Process"]:
        read, write = os.pipe()
        try:
            # Its own session (an interrupt of a kernel's group never reaches it), the
            # kernels' stdout and stderr (the agent's), and the kernel's environment.
            proc = subprocess.Popen(
                [python, "-c", kernelspecs.ZYGOTE, str(write)], env=env, cwd="/",
                stdin=subprocess.PIPE, pass_fds=(write,), start_new_session=True)
        except OSError as exc:
            os.close(read)
            log.warning("kernel zygote did not start: %s", exc)
            return None
        finally:
            os.close(write)
        zygote = cls(proc, key)
        threading.Thread(target=zygote._read, args=(read,), daemon=True,
                         name="kernel-zygote").start()
        ready = zygote.ask(None, START_TIMEOUT)
        if ready is None or not ready.get("ready"):
            log.warning("kernel zygote did not get ready (exit %s)", proc.poll())
            zygote.kill()
            return None
        return zygote

    def running(self) -> bool:
        return not self._ended and self.proc.poll() is None

    def ask(self, request: Optional[dict], timeout: float) -> Optional[dict]:
        """Send ``request`` (if any) and wait for the answer; None if it ended or timed out."""
        if request is not None and not self._send(request):
            return None
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def retire(self) -> None:
        """No more forks: it ends with the last of its kernels (its reader then reaps it)."""
        if not self._send({"retire": True}):
            self.kill()

    def _send(self, request: dict) -> bool:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self._close()

    def _close(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait()

    def _read(self, fd: int) -> None:
        with open(fd, "rb", buffering=0) as pipe:
            buffered = b""
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    if "exited" in message:
                        with self._changed:
                            self._exits[int(message["exited"])] = int(message["status"])
                            self._changed.notify_all()
                    else:
                        self._replies.put(message)
        # It ended (retired, with its last kernel gone; or killed): reap it.
        self._replies.put(None)
        with self._changed:
            self._ended = True
            self._changed.notify_all()
        self._close()

    def status(self, pid: int, timeout: float) -> Optional[int]:
        """The exit status of ``pid``, a kernel this zygote forked that has ended, as the
        zygote reaped it; None if the zygote ended without saying."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exits or self._ended, timeout)
            return self._exits.pop(pid, None)


class Forked:
    """A kernel forked by a zygote: watched through a pidfd (the agent is not its parent, so
    cannot wait for it), its exit status told by the zygote that reaps it."""

    def __init__(self, pid: int, zygote: _Process) -> None:
        self.pid = pid
        self._zygote = zygote
        self._status: Optional[int] = None
        self._ended = False
        self._lock = threading.Lock()   # asked from the event loop and from stop()'s thread
        try:
            self._pidfd: Optional[int] = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None          # already ended (and reaped)

    def running(self, timeout: float = 0) -> bool:
        """Whether it still runs (waiting up to ``timeout`` seconds for it to end)."""
        if self._pidfd is not None:
            ended = select.poll()       # readable once the process has ended
            ended.register(self._pidfd, select.POLLIN)
            if not ended.poll(timeout * 1000):
                return True
        with self._lock:
            if not self._ended:
                # The zygote reaps it on SIGCHLD and says so within a few milliseconds.
                self._status = self._zygote.status(self.pid, timeout=2.0)
                self._ended = True
        return False

    def __del__(self) -> None:
        # Closed only with the object: a check from another thread may be selecting on it.
        if getattr(self, "_pidfd", None) is not None:
            os.close(self._pidfd)

    def exit_code(self) -> Optional[int]:
        """None while it runs, and when its status was lost with its zygote."""
        return None if self.running() else self._status
