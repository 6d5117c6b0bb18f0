"""Running a program from the server's event loop without forking the server.

An event loop's own subprocess support forks the calling process: uvloop's (libuv's spawn)
always does, and a fork copies the page tables of the whole server, on the event loop's
thread. Measured on a 2-core host, a process of 150 MiB waits ~15 ms for each spawn, and so
does every request the server is serving meanwhile; a create and a kill each spawn the OCI
runtime. ``subprocess.Popen`` spawns with vfork, which copies nothing (~1 ms whatever the
server's size). The exit is then awaited through a pidfd, which becomes readable when the
child exits, and its output read by the loop's readers: no thread and no SIGCHLD handler.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass

DEVNULL = subprocess.DEVNULL
PIPE = subprocess.PIPE


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run(argv: list[str], *, input: bytes | None = None, stdout: int = DEVNULL,
              stderr: int = PIPE, env: dict[str, str] | None = None) -> Completed:
    """Run ``argv`` to its end; ``stdout``/``stderr``: DEVNULL, PIPE (collected) or an open
    fd. ``input`` is written to its stdin (else stdin is /dev/null). Like
    ``communicate()``, it returns once the program exited and closed its pipes. A missing
    program raises FileNotFoundError, as Popen does.

    Cancelled, it stops waiting but leaves the program running to its end (what it does
    may need finishing, e.g. an OCI runtime's own state); ``subprocess`` reaps it later."""
    proc = subprocess.Popen(argv, stdin=PIPE if input is not None else DEVNULL,
                            stdout=stdout, stderr=stderr, env=env, close_fds=True)
    loop = asyncio.get_running_loop()
    pending: list[asyncio.Future] = []
    buffers: dict[int, bytearray] = {}
    watched: list[tuple[int, bool]] = []          # (fd, is a writer)

    def reader(fd: int) -> None:
        done = loop.create_future()
        buffers[fd] = buf = bytearray()

        def readable() -> None:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if data:
                buf.extend(data)
            elif not done.done():
                loop.remove_reader(fd)
                done.set_result(None)
        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)
        watched.append((fd, False))
        pending.append(done)

    def writer(fd: int, data: bytes) -> None:
        done = loop.create_future()
        view = memoryview(data)

        def writable() -> None:
            nonlocal view
            try:
                view = view[os.write(fd, view):] if view else view
            except BlockingIOError:
                return
            except OSError:             # it exited without reading everything: as communicate
                view = view[:0]
            if not view and not done.done():
                loop.remove_writer(fd)
                watched.remove((fd, True))
                proc.stdin.close()              # the end of its input
                done.set_result(None)
        os.set_blocking(fd, False)
        watched.append((fd, True))
        loop.add_writer(fd, writable)
        pending.append(done)

    out_fd = proc.stdout.fileno() if proc.stdout is not None else -1
    err_fd = proc.stderr.fileno() if proc.stderr is not None else -1
    pidfd = os.pidfd_open(proc.pid)
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        if proc.stdin is not None:
            writer(proc.stdin.fileno(), input or b"")
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                reader(stream.fileno())
        await asyncio.gather(exited, *pending)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        for fd, is_writer in watched:
            (loop.remove_writer if is_writer else loop.remove_reader)(fd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    returncode = proc.wait()            # it has exited: this reaps it at once
    return Completed(returncode, bytes(buffers.get(out_fd, b"")), bytes(buffers.get(err_fd, b"")))


async def stop_helper(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """End a long-lived helper process that exits once its stdin closes; past ``timeout``
    seconds it is killed."""
    if proc.returncode is not None:
        return
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
