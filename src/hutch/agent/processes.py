"""Processes started through the agent: spawning, output fan-out, input, signals, reaping.

Each process runs in its own session (so its pid is its process group, and a signal to the
group reaches everything it spawned). A kill (SIGKILL: an explicit one, or the deadline's)
reaches further, to every descendant still linked to it by parent, including those that left
the group with setsid: see :func:`kill_tree`. The agent watches the child through a pidfd and its
output through non-blocking pipes (or a PTY master) registered with the event loop: no thread
per process and no polling. Output goes to every subscribed stream; a slow stream pauses reading
so that the process blocks on write instead of the agent buffering without bound.

A non-root user's command is started while the event loop's thread is that user for an
instant (``users._Creds.lend``). A child that must change identity is made by a full fork
of the agent, which copies its page tables on every spawn; a child of a thread that already
is the user needs no change, so ``subprocess`` starts it with vfork: about 0.8 ms less per
command, and no thread kept for it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple, Union

from ..errors import HutchError, InvalidArgumentError, NotFoundError
from ..protocol import envd
from .users import User, thread_creds

#: A subscriber holding more than this many unread bytes pauses the process's output.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1 * 1024 * 1024
READ_SIZE = 64 * 1024
#: After exit, how long to wait for a PTY to report that every writer closed it.
PTY_GRACE = 0.25


class Subscriber:
    """One stream's view of a process: a queue of ready-to-send messages.

    Output arrives already enveloped (bytes); lifecycle events (``end``) are dicts.
    """

    def __init__(self, proc: "Process") -> None:
        self.proc = proc
        self.items: Deque[Tuple[Union[bytes, Dict[str, Any]], int]] = deque()
        self.pending = 0
        self._waiter: Optional[asyncio.Future] = None

    def push(self, message: Union[bytes, Dict[str, Any]], size: int = 0) -> None:
        self.items.append((message, size))
        self.pending += size
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, timeout: Optional[float]) -> Union[bytes, Dict[str, Any], None]:
        """The next message, or None if ``timeout`` seconds pass without one.

        A bare future plus a timer rather than ``wait_for``: this runs once per output chunk
        and ``wait_for`` would create a task each time.
        """
        if not self.items:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None
            if timeout is not None:
                timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None))
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self.items:
                return None
        message, size = self.items.popleft()
        if size:
            self.pending -= size
            if self.pending < LOW_WATER:
                self.proc._maybe_resume()
        return message

    def close(self) -> None:
        self.proc.subscribers.discard(self)
        self.proc._maybe_resume()


class Process:
    """A running child and everything the agent holds for it."""

    def __init__(self, popen: subprocess.Popen, config: Dict[str, Any], tag: Optional[str], pty_fd: Optional[int]):
        self.popen = popen
        self.pid = popen.pid
        self.config = config
        self.tag = tag
        self.pty_fd = pty_fd
        self.stdin_fd: Optional[int] = None
        self.subscribers: Set[Subscriber] = set()
        self.end: Optional[Dict[str, Any]] = None
        self.finished = asyncio.get_running_loop().create_future()
        self._readers: Dict[int, str] = {}
        self._owned: List[int] = []  # output fds this object must close
        self._paused = False
        self._pty_eof = asyncio.Event()

    # -- output ------------------------------------------------------------------------------

    def _watch(self, fd: int, kind: str) -> None:
        os.set_blocking(fd, False)
        self._readers[fd] = kind
        if fd != self.pty_fd:
            self._owned.append(fd)
        asyncio.get_running_loop().add_reader(fd, self._on_readable, fd)

    def _on_readable(self, fd: int) -> None:
        self._read_once(fd)

    def _read_once(self, fd: int) -> bool:
        """Read what is there now; False once the fd has nothing more (EOF, EAGAIN or EIO)."""
        kind = self._readers.get(fd)
        if kind is None:
            return False
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: every writer of the PTY is gone
                raise
            data = b""
        if not data:
            self._unwatch(fd)
            if fd == self.pty_fd:
                self._pty_eof.set()
            return False
        message = envd.encode_data_envelope(kind, data)  # enveloped once, shared by all streams
        for sub in tuple(self.subscribers):
            sub.push(message, len(data))
            if sub.pending > HIGH_WATER:
                self._pause()
        return True

    def _unwatch(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None and not self._paused:
            asyncio.get_running_loop().remove_reader(fd)

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            loop = asyncio.get_running_loop()
            for fd in self._readers:
                loop.remove_reader(fd)

    def _maybe_resume(self) -> None:
        if self._paused and all(s.pending < LOW_WATER for s in self.subscribers):
            self._paused = False
            loop = asyncio.get_running_loop()
            for fd in self._readers:
                loop.add_reader(fd, self._on_readable, fd)

    async def _drain(self) -> None:
        """Collect output still buffered after the child exited, so none is lost before `end`.

        Pipes hold everything written before exit, so reading until EAGAIN is complete. A PTY
        hands data to the master side asynchronously; wait (briefly) for its EIO, which the
        kernel reports only after the buffered output has been read.
        """
        self._paused = False
        for fd in list(self._readers):
            asyncio.get_running_loop().remove_reader(fd)
            budget = 64  # a grandchild still writing must not keep us here forever
            while budget and self._read_once(fd):
                budget -= 1
        if self.pty_fd is not None and self.pty_fd in self._readers:
            loop = asyncio.get_running_loop()
            loop.add_reader(self.pty_fd, self._on_readable, self.pty_fd)
            try:
                await asyncio.wait_for(self._pty_eof.wait(), PTY_GRACE)
            except asyncio.TimeoutError:
                pass
        for fd in list(self._readers):
            self._readers.pop(fd)
            try:
                asyncio.get_running_loop().remove_reader(fd)
            except (ValueError, OSError):
                pass

    # -- lifecycle ---------------------------------------------------------------------------

    async def _wait(self, pidfd: int) -> None:
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        code = self.popen.wait()
        await self._drain()
        for fd in (self.pty_fd, self.stdin_fd, *self._owned):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pty_fd = self.stdin_fd = None
        self._owned = []
        if code < 0:
            status = "signal: " + (signal.strsignal(-code) or str(-code)).lower()
            # As envd words it (Go's exec error): the SDKs show it as the result's error, so
            # a command the OOM killer took says so.
            self.end = envd.end_event(-1, exited=False, status=status, error=status)
        else:
            self.end = envd.end_event(code, exited=True, status=f"exit status {code}")
        for sub in tuple(self.subscribers):
            sub.push(self.end)
        self.finished.set_result(self.end)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (the child is its session leader);
        SIGKILL to every descendant as well."""
        if signum == signal.SIGKILL and self.end is None:
            kill_tree(self.pid)
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self)
        self.subscribers.add(sub)
        return sub

    async def write_input(self, data: bytes, pty: bool) -> None:
        """Write to the PTY or stdin without ever blocking the event loop."""
        fd = self.pty_fd if pty else self.stdin_fd
        if fd is None:
            what = "pty" if pty else "stdin"
            raise InvalidArgumentError(f"process {self.pid} has no {what} to write to")
        view = memoryview(data)
        loop = asyncio.get_running_loop()
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_writer(fd)
            except BrokenPipeError:
                raise InvalidArgumentError(f"process {self.pid} closed its input") from None

    def close_stdin(self) -> None:
        if self.stdin_fd is None:
            if self.pty_fd is not None:
                raise InvalidArgumentError("a PTY has no separate stdin to close; send EOF (^D)")
            return
        os.close(self.stdin_fd)
        self.stdin_fd = None

    def resize(self, cols: int, rows: int) -> None:
        if self.pty_fd is None:
            raise InvalidArgumentError(f"process {self.pid} has no PTY")
        _set_winsize(self.pty_fd, cols, rows)

    def info(self) -> Dict[str, Any]:
        c = self.config
        return envd.process_info(self.pid, c["cmd"], c["args"], c["envs"], c.get("cwd"), self.tag)


def _children_by_parent(proc: str = "/proc") -> Dict[int, List[int]]:
    """Every process's children, from one scan of /proc (a sandbox holds at most its pids
    limit of them, about a thousand)."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as f:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(root: int, proc: str = "/proc") -> List[int]:
    """The pids below ``root`` in the parent tree, as /proc shows it now."""
    children = _children_by_parent(proc)
    out: List[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


#: Scans of the tree before giving up on stopping it (each stops what the previous missed).
_STOP_ROUNDS = 50


def kill_tree(root: int) -> None:
    """SIGKILL ``root``'s process group and every descendant of ``root``.

    A process group misses children that called setsid (``setsid cmd &``, daemons), and
    killing parents first would hand their children to init, out of reach. So the tree is
    frozen first: SIGSTOP to every process found under ``root``, scanning again until a scan
    finds nothing new (a stopped process cannot fork or exit), then SIGKILL to all of it.
    ``root`` is still our unreaped child, so its pid cannot be reused meanwhile; nor can a
    stopped descendant's. A process that already left the tree (a double fork, reparented to
    init) is not found: it lives on until the sandbox ends, as a background job would.
    """
    stopped: List[int] = []
    seen: Set[int] = set()
    for _ in range(_STOP_ROUNDS):
        new = [p for p in (root, *descendants(root)) if p not in seen]
        if not new:
            break
        for pid in new:
            seen.add(pid)
            try:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            except ProcessLookupError:
                pass
    try:
        os.killpg(root, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


#: oom_score_adj of what the agent starts (the sandbox's init and the agent have 500): when
#: the sandbox reaches its memory limit, the OOM killer takes a command, never the agent,
#: even when the memory is the kernel's (open files, pipes) and the command's RSS is small.
OOM_SCORE_ADJ = 1000


def _prefer_for_oom(pid: int) -> None:
    """Raise a new child's oom_score_adj (its children inherit it). Written from here, right
    after the exec, rather than in the child before it: a preexec hook would make every
    spawn a full fork of the agent. So what the child forks in its first instant (before
    this write) keeps 500; anything that grows for long enough to matter has 1000."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(OOM_SCORE_ADJ))
    except OSError:
        pass


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    import fcntl
    import struct
    import termios

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 24, cols or 80, 0, 0))


def _take_controlling_tty() -> None:  # runs in the child, after setsid()
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class ProcessTable:
    """All processes the agent started and still tracks, by pid."""

    def __init__(self) -> None:
        self.procs: Dict[int, Process] = {}
        self._tasks: Set[asyncio.Task] = set()

    @staticmethod
    def _popen(user: User, argv: List[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` as ``user``: by vfork while the loop's thread is the user, where the
        switch works, else by a fork that changes identity in the child."""
        if user.uid == 0 or os.getuid() != 0:
            return subprocess.Popen(argv, **kwargs)
        try:
            creds = thread_creds()
            saved = creds.lend(user)
        except (OSError, HutchError):
            return subprocess.Popen(argv, user=user.uid, group=user.gid,
                                    extra_groups=user.groups, **kwargs)
        try:
            return subprocess.Popen(argv, **kwargs)
        finally:
            creds.take_back(saved)

    def start(
        self,
        user: User,
        cmd: str,
        args: List[str],
        env: Dict[str, str],
        call_envs: Dict[str, str],
        cwd: Optional[str],
        tag: Optional[str],
        pty_size: Optional[tuple],
        stdin: bool,
    ) -> Process:
        """Spawn ``cmd args`` as ``user``; the caller subscribes before yielding to the loop."""
        workdir = cwd or user.workdir()
        if not os.path.isabs(workdir):
            workdir = os.path.join(user.workdir(), workdir)
        as_user: Dict[str, Any] = {}
        if user.uid != 0 and os.getuid() == 0:
            as_user = dict(user=user.uid, group=user.gid, extra_groups=user.groups)
        master = slave = None
        stdin_w = None
        try:
            if pty_size is not None:
                import pty as _pty

                master, slave = _pty.openpty()
                _set_winsize(slave, *pty_size)
                if user.uid != 0 and os.getuid() == 0:
                    os.fchown(slave, user.uid, -1)  # the terminal belongs to its user, as at login
                env.setdefault("TERM", "xterm-256color")
                popen = subprocess.Popen(
                    [cmd, *args], executable=cmd, stdin=slave, stdout=slave, stderr=slave,
                    cwd=workdir, env=env, start_new_session=True, close_fds=True,
                    preexec_fn=_take_controlling_tty, **as_user,
                )
            else:
                popen = self._popen(
                    user, [cmd, *args], executable=cmd,
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    cwd=workdir, env=env, start_new_session=True, close_fds=True,
                )
        except FileNotFoundError as exc:
            for fd in (master, slave):
                if fd is not None:
                    os.close(fd)
            missing = exc.filename or cmd
            raise InvalidArgumentError(f"cannot start {cmd!r}: {missing!r} not found") from None
        except (PermissionError, NotADirectoryError) as exc:
            for fd in (master, slave):
                if fd is not None:
                    os.close(fd)
            raise InvalidArgumentError(f"cannot start {cmd!r}: {exc}") from None
        finally:
            if slave is not None:
                os.close(slave)
        config = {"cmd": cmd, "args": list(args), "envs": dict(call_envs), "cwd": cwd}
        proc = Process(popen, config, tag, master)
        if master is not None:
            proc._watch(master, "pty")
            os.set_blocking(master, False)
        else:
            # Take the raw fds away from Popen so its file objects never read or close them.
            out_fd = os.dup(popen.stdout.fileno())
            err_fd = os.dup(popen.stderr.fileno())
            popen.stdout.close()
            popen.stderr.close()
            popen.stdout = popen.stderr = None
            proc._watch(out_fd, "stdout")
            proc._watch(err_fd, "stderr")
            if popen.stdin is not None:
                stdin_w = os.dup(popen.stdin.fileno())
                popen.stdin.close()
                popen.stdin = None
                os.set_blocking(stdin_w, False)
                proc.stdin_fd = stdin_w
        self.procs[proc.pid] = proc
        _prefer_for_oom(proc.pid)
        pidfd = os.pidfd_open(proc.pid)
        task = asyncio.ensure_future(self._run(proc, pidfd))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return proc

    async def _run(self, proc: Process, pidfd: int) -> None:
        try:
            await proc._wait(pidfd)
        finally:
            self.procs.pop(proc.pid, None)

    def select(self, selector: Optional[Dict[str, Any]]) -> Process:
        """Find a process by ``{"pid": n}`` or ``{"tag": "…"}``; NotFoundError otherwise."""
        from ..protocol.protojson import field

        pid = field(selector, "pid")
        tag = field(selector, "tag")
        if pid is not None:
            proc = self.procs.get(int(pid))
            if proc is not None and proc.end is None:
                return proc
            raise NotFoundError(f"process with pid {pid} not found")
        if tag is not None:
            for proc in self.procs.values():
                if proc.tag == tag and proc.end is None:
                    return proc
            raise NotFoundError(f"process with tag {tag!r} not found")
        raise InvalidArgumentError("process selector needs a pid or a tag")

    def running(self) -> List[Process]:
        return [p for p in self.procs.values() if p.end is None]

    def kill_all(self) -> None:
        """SIGKILL every tracked process group (the agent is shutting down)."""
        for proc in list(self.procs.values()):
            proc.signal(signal.SIGKILL)
