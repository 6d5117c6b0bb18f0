"""``process.Process``: start commands, stream their output, feed their input, signal them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any, AsyncIterator, Dict

from ..errors import InvalidArgumentError, TimeoutError_
from ..protocol import envd
from ..protocol.envelope import encode_envelope
from ..protocol.protojson import b64decode, field, parse_enum, parse_int
from .processes import Process, Subscriber
from .rpc import CLIENT_STREAM, SERVER_STREAM, UNARY, Call
from .state import AgentState

#: Envelopes coalesced into one HTTP chunk when output arrives faster than it is sent.
_BATCH = 64


class ProcessService:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.methods = {
            "Start": (SERVER_STREAM, self.start),
            "Connect": (SERVER_STREAM, self.connect),
            "List": (UNARY, self.list),
            "SendInput": (UNARY, self.send_input),
            "StreamInput": (CLIENT_STREAM, self.stream_input),
            "SendSignal": (UNARY, self.send_signal),
            "CloseStdin": (UNARY, self.close_stdin),
            "Update": (UNARY, self.update),
        }

    async def start(self, call: Call, msg: Dict[str, Any]) -> AsyncIterator[bytes]:
        config = field(msg, "process") or {}
        cmd = field(config, "cmd")
        if not cmd:
            raise InvalidArgumentError("process.cmd is required")
        args = [str(a) for a in field(config, "args", [])]
        envs = {str(k): str(v) for k, v in (field(config, "envs") or {}).items()}
        pty = field(msg, "pty")
        pty_size = None
        if pty is not None:
            size = field(pty, "size") or {}
            pty_size = (parse_int(field(size, "cols"), 80), parse_int(field(size, "rows"), 24))
        user = call.user
        env = self.state.process_env(user, envs)
        cwd = field(config, "cwd")
        if cwd:
            cwd = self.state.resolve(user, cwd)
        elif self.state.default_workdir and os.path.isdir(self.state.default_workdir):
            cwd = self.state.default_workdir          # the template's WORKDIR
        proc = self.state.processes.start(
            user, cmd, args, env, envs, cwd, field(msg, "tag"), pty_size, bool(field(msg, "stdin", False))
        )
        sub = proc.subscribe()
        return self._stream(proc, sub, call, kill_at_deadline=True)

    async def connect(self, call: Call, msg: Dict[str, Any]) -> AsyncIterator[bytes]:
        proc = self.state.processes.select(field(msg, "process"))
        sub = proc.subscribe()
        return self._stream(proc, sub, call, kill_at_deadline=False)

    async def _stream(self, proc: Process, sub: Subscriber, call: Call, kill_at_deadline: bool) -> AsyncIterator[bytes]:
        timeout = call.timeout
        deadline = time.monotonic() + timeout if timeout else None
        keepalive = call.keepalive
        try:
            yield encode_envelope(envd.start_event(proc.pid))
            while True:
                wait = keepalive
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                message = await sub.get(wait)
                if message is None:
                    if deadline is not None and time.monotonic() >= deadline:
                        if kill_at_deadline:
                            proc.signal(signal.SIGKILL)
                            await asyncio.wait_for(asyncio.shield(proc.finished), 5)
                        raise TimeoutError_(f"process {proc.pid} exceeded its {timeout:g}s deadline")
                    yield encode_envelope(envd.keepalive_event())
                    continue
                batch = [_frame(message)]
                ended = message is proc.end
                while not ended and sub.items and len(batch) < _BATCH:
                    message = await sub.get(0)
                    batch.append(_frame(message))
                    ended = message is proc.end
                yield b"".join(batch)
                if ended:
                    return
        finally:
            sub.close()

    async def list(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        return {"processes": [p.info() for p in self.state.processes.running()]}

    async def send_input(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        proc = self.state.processes.select(field(msg, "process"))
        await _write(proc, field(msg, "input") or {})
        return {}

    async def stream_input(self, call: Call, messages: AsyncIterator[Dict[str, Any]]) -> Dict[str, Any]:
        proc = None
        async for msg in messages:
            event = field(msg, "event") or msg
            if "start" in event:
                proc = self.state.processes.select(field(event["start"], "process"))
            elif "data" in event:
                if proc is None:
                    raise InvalidArgumentError("StreamInput must begin with a start event")
                await _write(proc, field(event["data"], "input") or {})
        return {}

    async def send_signal(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        proc = self.state.processes.select(field(msg, "process"))
        number = parse_enum(envd.SIGNALS, field(msg, "signal"))
        if number not in (signal.SIGTERM, signal.SIGKILL):
            raise InvalidArgumentError("signal must be SIGNAL_SIGTERM or SIGNAL_SIGKILL")
        proc.signal(number)
        if number == signal.SIGKILL:
            # SIGKILL cannot be caught: answer once the process is reaped, so that a List or a
            # second signal right after this call already sees it gone.
            try:
                await asyncio.wait_for(asyncio.shield(proc.finished), 5)
            except asyncio.TimeoutError:
                pass
        return {}

    async def close_stdin(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        self.state.processes.select(field(msg, "process")).close_stdin()
        return {}

    async def update(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        proc = self.state.processes.select(field(msg, "process"))
        pty = field(msg, "pty")
        if pty is not None:
            size = field(pty, "size") or {}
            proc.resize(parse_int(field(size, "cols"), 80), parse_int(field(size, "rows"), 24))
        return {}


def _frame(message) -> bytes:
    return message if isinstance(message, bytes) else encode_envelope(message)


async def _write(proc: Process, data: Dict[str, Any]) -> None:
    if field(data, "pty") is not None:
        await proc.write_input(b64decode(field(data, "pty")), pty=True)
    elif field(data, "stdin") is not None:
        await proc.write_input(b64decode(field(data, "stdin")), pty=False)
