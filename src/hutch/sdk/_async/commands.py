"""Running commands in a sandbox: ``sbx.commands``, and the handle of a running command.

A command's output arrives as a Connect stream of process events (``start`` with the pid,
``data`` chunks, one ``end``). The handle reads that stream in the background from the
moment the command starts, so ``on_stdout``/``on_stderr`` fire as output arrives, and
``wait()`` only waits for the end. (A foreground ``run`` waits at once, so the sync SDK reads
its stream on the caller's own thread instead.)
"""

from __future__ import annotations

import codecs
import dataclasses
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, Union

from hutch import errors
from hutch.sdk import _wire
from hutch.sdk._async import _backend
from hutch.sdk._async.transport import AsyncAgent, AsyncEventStream
from hutch.sdk._models import CommandResult, ProcessInfo
from hutch.sdk._output import OUTPUT_CAP, RetainedOutput

OutputHandler = Callable[[Any], Any]


class AsyncCommandHandle:
    """A running command (or PTY): its pid, output so far, and ways to wait, kill, feed it."""

    def __init__(self, pid: int, stream: AsyncEventStream, commands: "AsyncCommands",
                 on_stdout: Optional[OutputHandler] = None,
                 on_stderr: Optional[OutputHandler] = None,
                 on_pty: Optional[OutputHandler] = None,
                 input_field: str = "stdin", retain_output: bool = True,
                 max_output: Optional[int] = OUTPUT_CAP, background: bool = True) -> None:
        self._pid = pid
        self._stream = stream
        self._commands = commands
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_pty = on_pty
        self._input_field = input_field
        # Without retained output (a long, chatty command) only callbacks see the text; with
        # it, at most max_output characters of each stream are kept (hutch.sdk._output).
        self._stdout = RetainedOutput(max_output) if retain_output else None
        self._stderr = RetainedOutput(max_output) if retain_output else None
        self._out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._err_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._result: Optional[CommandResult] = None
        self._error: Optional[errors.HutchError] = None
        self._disconnected = False
        self._lock = _backend.lock()  # output lists and callbacks, shared with the reader
        self._listeners: List[_backend.Queue] = []  # iterators waiting for output
        self._worker_done = False
        # A foreground command's caller waits at once: the sync SDK then reads in its thread.
        self._worker = _backend.Worker(self._read, stream.abort, background)

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def stdout(self) -> Optional[str]:
        """The output so far; None when started with ``retain_output=False``. Past
        ``max_output`` characters it ends with a marker counting what was not kept."""
        return None if self._stdout is None else self._stdout.text()

    @property
    def stderr(self) -> Optional[str]:
        return None if self._stderr is None else self._stderr.text()

    @property
    def exit_code(self) -> Optional[int]:
        """None while the command runs."""
        return None if self._result is None else self._result.exit_code

    @property
    def done(self) -> bool:
        """True once the output stream ended (the command exited, or the stream broke)."""
        return self._worker.done()

    @property
    def error(self) -> Optional[str]:
        return None if self._result is None else self._result.error

    async def _read(self) -> None:
        try:
            async for message in self._stream.messages:
                event = message.get("event") or {}
                if "data" in event:
                    await self._on_data(event["data"])
                elif "end" in event:
                    await self._on_end(event["end"])
            await self._flush()
        except errors.HutchError as exc:
            if not self._disconnected:
                self._error = exc
        except Exception as exc:  # a callback failed, or the stream broke unexpectedly
            if not self._disconnected:
                self._error = errors.SandboxError(f"reading the output of pid {self._pid}: {exc!r}")
        finally:
            # Release the connection even when a callback raised mid-stream.
            try:
                await self._stream.aclose()
            except Exception:
                pass
            with self._lock:
                self._worker_done = True
                self._tell(None)

    async def _on_data(self, data: Dict[str, str]) -> None:
        if "stdout" in data:
            await self._emit_stdout(self._out_decoder.decode(_wire.unb64(data["stdout"])))
        if "stderr" in data:
            await self._emit_stderr(self._err_decoder.decode(_wire.unb64(data["stderr"])))
        if "pty" in data:
            chunk = _wire.unb64(data["pty"])
            with self._lock:
                self._tell((None, None, chunk))
                callback = self._on_pty
            await _backend.call(callback, chunk)

    async def _emit_stdout(self, text: str) -> None:
        if text:
            with self._lock:
                if self._stdout is not None:
                    self._stdout.add(text)
                self._tell((text, None, None))
                callback = self._on_stdout
            await _backend.call(callback, text)

    async def _emit_stderr(self, text: str) -> None:
        if text:
            with self._lock:
                if self._stderr is not None:
                    self._stderr.add(text)
                self._tell((None, text, None))
                callback = self._on_stderr
            await _backend.call(callback, text)

    def _tell(self, item: Any) -> None:
        for listener in self._listeners:
            listener.put_nowait(item)

    async def __aiter__(self) -> AsyncIterator[Tuple[Optional[str], Optional[str], Optional[bytes]]]:
        """Output as ``(stdout, stderr, pty)`` tuples, one of them set, until the end.

        Output that arrived before iterating comes first (stdout, then stderr).
        """
        listener = _backend.Queue()
        with self._lock:
            backlog = ([(t, None, None) for t in _parts(self._stdout)]
                       + [(None, t, None) for t in _parts(self._stderr)])
            if self._worker_done:
                backlog.append(None)
            else:
                self._listeners.append(listener)
        try:
            for item in backlog:
                if item is None:
                    return
                yield item
            while True:
                item = await listener.get()
                if item is None:
                    return
                yield item
        finally:
            # An iteration left early stops collecting output it would never read.
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

    async def _flush(self) -> None:
        """Emit a UTF-8 sequence cut off at the end as replacement characters, not silence."""
        await self._emit_stdout(self._out_decoder.decode(b"", final=True))
        await self._emit_stderr(self._err_decoder.decode(b"", final=True))
        if self._result is not None:
            self._result.stdout = self.stdout
            self._result.stderr = self.stderr

    async def _on_end(self, end: Dict[str, Any]) -> None:
        self._result = CommandResult(
            stdout=self.stdout, stderr=self.stderr,
            exit_code=int(end.get("exitCode", 0)), error=end.get("error") or None,
        )

    async def wait(self, on_pty: Optional[OutputHandler] = None,
                   on_stdout: Optional[OutputHandler] = None,
                   on_stderr: Optional[OutputHandler] = None) -> CommandResult:
        """Wait for the command to end; a non-zero exit code raises ``CommandExitError``.

        Callbacks given here replace the ones given at start; they first receive the output
        that arrived before (PTY output excepted), so nothing is missed, as in e2b.
        """
        await self._attach(on_pty, on_stdout, on_stderr)
        await self._finish()
        if self._result.exit_code != 0:
            # CommandExitError quotes the stderr tail, so unretained output reads as empty.
            raise errors.CommandExitError(
                self._result if self._result.stderr is not None
                else dataclasses.replace(self._result, stderr=""))
        return self._result

    async def _finish(self) -> CommandResult:
        """Wait for the end; the result whatever the exit code (``wait()`` raises on non-zero)."""
        await self._worker.join()
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise errors.SandboxError(f"the command (pid {self._pid}) ended without an end event")
        return self._result

    async def _closed(self) -> None:
        """Wait until the output stream ended, however it ended."""
        await self._worker.join()

    async def _attach(self, on_pty: Optional[OutputHandler], on_stdout: Optional[OutputHandler],
                      on_stderr: Optional[OutputHandler]) -> None:
        backlog_out: List[str] = []
        backlog_err: List[str] = []
        with self._lock:
            if on_pty is not None:
                self._on_pty = on_pty
            if on_stdout is not None:
                self._on_stdout, backlog_out = on_stdout, _parts(self._stdout)
            if on_stderr is not None:
                self._on_stderr, backlog_err = on_stderr, _parts(self._stderr)
        for text in backlog_out:
            await _backend.call(on_stdout, text)
        for text in backlog_err:
            await _backend.call(on_stderr, text)

    async def disconnect(self) -> None:
        """Stop receiving output; the command keeps running (``commands.connect`` rejoins it)."""
        self._disconnected = True
        await self._worker.cancel()

    async def kill(self) -> bool:
        """SIGKILL the command; False if it was already gone."""
        return await self._commands.kill(self._pid)

    async def send_stdin(self, data: Union[str, bytes],
                         request_timeout: Optional[float] = None) -> None:
        await self._commands._send_input(self._pid, self._input_field, data, request_timeout)

    async def close_stdin(self, request_timeout: Optional[float] = None) -> None:
        await self._commands.close_stdin(self._pid, request_timeout)


class AsyncCommands:
    """``sbx.commands``: start, list, connect to, feed and kill processes in the sandbox."""

    def __init__(self, agent: AsyncAgent) -> None:
        self._agent = agent

    async def list(self, request_timeout: Optional[float] = None) -> List[ProcessInfo]:
        reply = await self._agent.unary("process.Process/List", {},
                                        request_timeout=request_timeout)
        return [ProcessInfo.from_wire(p) for p in reply.get("processes") or []]

    async def kill(self, pid: int, request_timeout: Optional[float] = None) -> bool:
        """SIGKILL the process; False if there is no such process."""
        try:
            await self._agent.unary(
                "process.Process/SendSignal",
                {"process": _wire.selector(pid), "signal": "SIGNAL_SIGKILL"},
                request_timeout=request_timeout,
            )
        except errors.NotFoundError:
            return False
        return True

    async def send_stdin(self, pid: int, data: Union[str, bytes],
                         request_timeout: Optional[float] = None) -> None:
        """Write to the process's stdin (it must have been started with ``stdin=True``)."""
        await self._send_input(pid, "stdin", data, request_timeout)

    async def _send_input(self, pid: int, field: str, data: Union[str, bytes],
                          request_timeout: Optional[float]) -> None:
        await self._agent.unary(
            "process.Process/SendInput",
            {"process": _wire.selector(pid), "input": {field: _wire.b64(data)}},
            request_timeout=request_timeout,
        )

    async def close_stdin(self, pid: int, request_timeout: Optional[float] = None) -> None:
        """Close the process's stdin: it reads end-of-file."""
        await self._agent.unary("process.Process/CloseStdin", {"process": _wire.selector(pid)},
                                request_timeout=request_timeout)

    async def run(self, cmd: str, background: Optional[bool] = None,
                  envs: Optional[Dict[str, str]] = None, user: Optional[str] = None,
                  cwd: Optional[str] = None, on_stdout: Optional[OutputHandler] = None,
                  on_stderr: Optional[OutputHandler] = None, stdin: Optional[bool] = None,
                  timeout: Optional[float] = 60, request_timeout: Optional[float] = None,
                  *, retain_output: bool = True,
                  max_output: Optional[int] = OUTPUT_CAP) -> Any:
        """Run ``cmd`` in a bash login shell.

        Foreground (default): wait and return a ``CommandResult``; a non-zero exit code
        raises ``CommandExitError``. ``background=True``: return the running
        ``CommandHandle`` at once. ``timeout`` (seconds, 0 = none) bounds the command: the
        agent kills it then, and ``wait()`` raises ``TimeoutError_``. The result keeps at
        most ``max_output`` characters of stdout and of stderr (None: all), then a marker
        counting the rest; ``on_stdout``/``on_stderr`` still see every character.
        """
        program, args = _wire.shell_command(cmd)
        request = {
            "process": _wire.process_config(program, args, envs, cwd),
            "stdin": bool(stdin),
        }
        handle = await self._start(request, user, timeout, request_timeout,
                                   on_stdout=on_stdout, on_stderr=on_stderr,
                                   retain_output=retain_output, max_output=max_output,
                                   background=bool(background))
        return handle if background else await handle.wait()

    async def connect(self, pid: int, timeout: Optional[float] = 60,
                      request_timeout: Optional[float] = None,
                      on_stdout: Optional[OutputHandler] = None,
                      on_stderr: Optional[OutputHandler] = None, *,
                      retain_output: bool = True,
                      max_output: Optional[int] = OUTPUT_CAP) -> AsyncCommandHandle:
        """Attach to a running process and receive its output from now on."""
        stream = await self._agent.stream(
            "process.Process/Connect", {"process": _wire.selector(pid)},
            timeout=timeout, request_timeout=request_timeout,
        )
        return await self._handle(stream, on_stdout=on_stdout, on_stderr=on_stderr,
                                  retain_output=retain_output, max_output=max_output)

    async def _exec(self, argv: List[str], *, envs: Optional[Dict[str, str]],
                    cwd: Optional[str], user: Optional[str], timeout: Optional[float],
                    request_timeout: Optional[float]) -> AsyncCommandHandle:
        """Start ``argv`` without a shell, stdin open (``sbx.exec`` wraps the handle)."""
        request = {
            "process": _wire.process_config(argv[0], argv[1:], envs, cwd),
            "stdin": True,
        }
        return await self._start(request, user, timeout, request_timeout)

    async def _start(self, request: dict, user: Optional[str], timeout: Optional[float],
                     request_timeout: Optional[float], **callbacks: Any) -> AsyncCommandHandle:
        stream = await self._agent.stream("process.Process/Start", request, user=user,
                                          timeout=timeout, request_timeout=request_timeout)
        return await self._handle(stream, **callbacks)

    async def _handle(self, stream: AsyncEventStream, input_field: str = "stdin",
                      **callbacks: Any) -> AsyncCommandHandle:
        try:
            first = await stream.first()
            start = (first.get("event") or {}).get("start")
            if start is None or "pid" not in start:
                raise errors.SandboxError(f"expected a start event, got {first!r}")
        except BaseException:
            await stream.aclose()
            raise
        return AsyncCommandHandle(int(start["pid"]), stream, self, input_field=input_field,
                                  **callbacks)


def _parts(kept: Optional[RetainedOutput]) -> List[str]:
    """The chunks kept so far, for a late listener's backlog."""
    return [] if kept is None else list(kept.parts)
