"""``sbx.exec(*argv)``: a process in the shape of Modal's ``Sandbox.exec``.

The argv runs as given, with no shell in between (the agent starts ``argv[0]`` found on the
sandbox's PATH, with ``argv[1:]`` as its arguments), so nothing needs quoting. The process
object reads like ``subprocess.Popen``: ``stdout`` and ``stderr`` are readers (``read()`` or
line by line), ``stdin`` a writer, ``wait()`` gives the exit code, ``returncode`` is None
until the end. A non-zero exit is an ordinary outcome here, not an exception (unlike
``commands.run``).

Built on the command handle, which reads the output stream in the background from the
start: output is kept until read, so reading stdout to the end never stalls on unread stderr.
"""

from __future__ import annotations

from typing import AsyncIterator, Optional, Union

from hutch import errors
from hutch.sdk._async.commands import AsyncCommandHandle


class AsyncStreamReader:
    """One output stream of a process: ``await read()``, or ``async for line in reader``.

    Reading consumes, as from a pipe: ``read()`` returns what earlier reads and iterations
    have not; lines keep their ``\\n`` (the last one may have none).
    """

    def __init__(self, handle: AsyncCommandHandle, name: str) -> None:
        self._handle = handle
        self._index = 0 if name == "stdout" else 1  # position in the handle's output tuples
        self._name = name
        self._taken = 0  # characters already handed out

    def _text(self) -> str:
        return getattr(self._handle, self._name) or ""

    async def read(self) -> str:
        """Everything not read yet, once the stream ended (the process exited or was killed)."""
        await self._handle._closed()
        text = self._text()
        rest, self._taken = text[self._taken:], len(text)
        return rest

    async def __aiter__(self) -> AsyncIterator[str]:
        """Lines as they arrive, until the stream ends."""
        skip = self._taken
        pending = ""
        async for item in self._handle:
            chunk = item[self._index]
            if not chunk:
                continue
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            pending += chunk
            while "\n" in pending:
                line, pending = pending.split("\n", 1)
                self._taken += len(line) + 1
                yield line + "\n"
        if pending:
            self._taken += len(pending)
            yield pending


class AsyncStreamWriter:
    """A process's stdin: each ``write`` is delivered at once; ``write_eof`` closes it."""

    def __init__(self, handle: AsyncCommandHandle) -> None:
        self._handle = handle

    async def write(self, data: Union[str, bytes]) -> None:
        if data:
            await self._handle.send_stdin(data)

    async def write_eof(self) -> None:
        """The process reads end-of-file from now on (nothing to do if it has ended: a
        process that exits as soon as it has read what it was sent often has, before this
        call reaches it, and its stdin went with it)."""
        try:
            await self._handle.close_stdin()
        except errors.SandboxNotFoundError:
            raise
        except errors.NotFoundError:
            pass                        # the process, not the sandbox

    async def drain(self) -> None:
        """Nothing to flush (writes are not buffered); here for code written for Modal."""


class AsyncProcess:
    """A process started by ``sbx.exec``."""

    def __init__(self, handle: AsyncCommandHandle) -> None:
        self._handle = handle
        self.stdout = AsyncStreamReader(handle, "stdout")
        self.stderr = AsyncStreamReader(handle, "stderr")
        self.stdin = AsyncStreamWriter(handle)

    def __repr__(self) -> str:
        return f"<Process pid={self.pid} returncode={self.returncode}>"

    @property
    def pid(self) -> int:
        """The process id inside the sandbox (``commands.kill``/``connect`` take it)."""
        return self._handle.pid

    @property
    def returncode(self) -> Optional[int]:
        """The exit code; None while the process runs."""
        return self._handle.exit_code

    def poll(self) -> Optional[int]:
        return self.returncode

    async def wait(self) -> int:
        """Wait for the exit and return its code (non-zero included).

        Raises ``TimeoutError_`` when the exec's ``timeout`` killed it, and
        ``SandboxNotFoundError`` when the sandbox went away meanwhile.
        """
        result = await self._handle._finish()
        return result.exit_code

    async def kill(self) -> bool:
        """SIGKILL the process; False if it had already exited."""
        return await self._handle.kill()


def check_argv(argv: tuple) -> None:
    if not argv:
        raise errors.InvalidArgumentError("exec() needs a program: exec('ls', '-l')")
    for arg in argv:
        if not isinstance(arg, str):
            raise errors.InvalidArgumentError(
                f"exec() arguments are strings (no shell parses them), got {arg!r}")
