"""ZeroMQ's wire protocol (ZMTP 3.0, NULL security) over a Unix socket, on asyncio alone.

Jupyter kernels listen with ZeroMQ; the interpreter only ever connects to them, as a DEALER
(the shell channel) and a SUB (IOPub), over the ``ipc`` transport, which is a plain Unix
stream socket. Speaking the protocol directly instead of through pyzmq keeps the interpreter
on the standard library: no libzmq I/O threads between the event loop and the socket (a
message is one ``write`` and one ``data_received``), and nothing to import or keep in memory
(pyzmq with jupyter_client was a third of a second of start-up and half the interpreter's heap).

The protocol (ZeroMQ RFC 23): both sides send a 64-byte greeting (signature, version,
security mechanism), then a READY command naming their socket type; after that each message
is a run of frames, each a flags byte (MORE, LONG, COMMAND), a length (one byte, or eight if
LONG) and the body. We announce version 3.0, so libzmq speaks 3.0 to us: a SUB subscribes
with a message whose first byte is 1, not with a SUBSCRIBE command.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from typing import Deque, List, Optional

MORE, LONG, COMMAND = 1, 2, 4
#: Signature (0xFF, 8 bytes of padding, 0x7F), version 3.0, mechanism NULL, as-server 0, filler.
GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
#: While this many bytes of complete messages wait unread, the socket is not read: the
#: kernel's side queues (and past its high-water mark drops) rather than our memory growing.
BACKLOG = 64 * 1024 * 1024


class ProtocolError(Exception):
    pass


def frames(parts: List[bytes]) -> bytes:
    """One message, ``parts`` as its frames."""
    out = bytearray()
    last = len(parts) - 1
    for i, part in enumerate(parts):
        more = MORE if i < last else 0
        size = len(part)
        if size < 256:
            out += bytes((more, size))
        else:
            out += bytes((more | LONG,)) + struct.pack(">Q", size)
        out += part
    return bytes(out)


def command(name: bytes, body: bytes = b"") -> bytes:
    data = bytes((len(name),)) + name + body
    if len(data) < 256:
        return bytes((COMMAND, len(data))) + data
    return bytes((COMMAND | LONG,)) + struct.pack(">Q", len(data)) + data


def ready(socket_type: str) -> bytes:
    """Our READY command: the socket type, and an empty identity (the ROUTER picks one)."""
    def prop(name: bytes, value: bytes) -> bytes:
        return bytes((len(name),)) + name + struct.pack(">I", len(value)) + value
    return command(b"READY", prop(b"Socket-Type", socket_type.encode()) + prop(b"Identity", b""))


class Peer(asyncio.Protocol):
    """One connection to a kernel's socket. :meth:`recv` returns whole messages (lists of
    frames) in arrival order; :meth:`send` queues one. :attr:`ready` resolves once the
    handshake is done (or fails with the reason the connection ended)."""

    def __init__(self, socket_type: str) -> None:
        self.socket_type = socket_type
        self.transport: Optional[asyncio.Transport] = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self._buf = bytearray()
        self._pos = 0
        self._greeted = False
        self._parts: List[bytes] = []
        self._inbox: Deque[List[bytes]] = collections.deque()
        self._queued = 0
        self._paused = False
        self._waiter: Optional[asyncio.Future] = None
        self._error: Optional[BaseException] = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(GREETING + ready(self.socket_type))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except ProtocolError as exc:
            self._fail(exc)
            self.transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._fail(exc or ConnectionResetError("the kernel closed the connection"))

    # -- API ----------------------------------------------------------------------------------

    def send(self, parts: List[bytes]) -> None:
        if self.closed:
            raise ConnectionResetError("the connection to the kernel is closed")
        self.transport.write(frames(parts))

    async def recv(self, timeout: Optional[float] = None) -> List[bytes]:
        """The next message; ``TimeoutError`` after ``timeout`` seconds without one, the
        connection's error once it has ended and every message before it was read."""
        if not self._inbox:
            if self._error is not None:
                raise self._error
            # A timer on the waiter itself rather than asyncio.wait_for, which wraps it in a
            # second future and so resumes us one turn of the event loop later.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self._inbox:
                raise self._error or ConnectionResetError("the connection to the kernel closed")
        msg = self._inbox.popleft()
        self._queued -= sum(len(p) for p in msg)
        if self._paused and self._queued < BACKLOG // 2:
            self._paused = False
            self.transport.resume_reading()
        return msg

    def pending(self) -> int:
        """How many whole messages wait unread."""
        return len(self._inbox)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._fail(ConnectionResetError("the connection to the kernel is closed"))

    # -- internals ----------------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self._error is None:
            self._error = exc
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()          # retrieved: nobody may be waiting for it
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> None:
        buf = self._buf
        pos = self._pos
        if not self._greeted:
            if len(buf) - pos < 64:
                if len(buf) >= 1 and buf[0] != 0xFF or len(buf) >= 10 and not buf[9] & 1:
                    raise ProtocolError("the peer does not speak ZMTP 3")
                return
            if buf[0] != 0xFF or not buf[9] & 1 or buf[10] < 3:
                raise ProtocolError("the peer does not speak ZMTP 3")
            if bytes(buf[12:32]).rstrip(b"\0") != b"NULL":
                raise ProtocolError("the peer wants a security mechanism other than NULL")
            pos += 64
            self._greeted = True
        got = False
        end = len(buf)
        while end - pos >= 2:
            flags = buf[pos]
            if flags & LONG:
                if end - pos < 9:
                    break
                size = struct.unpack_from(">Q", buf, pos + 1)[0]
                start = pos + 9
            else:
                size = buf[pos + 1]
                start = pos + 2
            if end - start < size:
                break
            body = bytes(buf[start:start + size])
            pos = start + size
            if flags & COMMAND:
                self._command(body)
                continue
            self._parts.append(body)
            if not flags & MORE:
                msg, self._parts = self._parts, []
                self._inbox.append(msg)
                self._queued += sum(len(p) for p in msg)
                got = True
        # Drop what was consumed (at once when all of it was, else once it is most of it).
        if pos == end:
            del buf[:]
            pos = 0
        elif pos > 65536 and pos > end // 2:
            del buf[:pos]
            pos = 0
        self._pos = pos
        if got:
            self._wake()
            if not self._paused and self._queued >= BACKLOG:
                self._paused = True
                self.transport.pause_reading()

    def _command(self, body: bytes) -> None:
        name = body[1:1 + body[0]] if body else b""
        if name == b"READY":
            if not self.ready.done():
                self.ready.set_result(None)
        elif name == b"ERROR":
            reason = body[2 + body[0]:].decode("utf-8", "replace")
            raise ProtocolError(f"the kernel refused the connection: {reason}")
        elif name == b"PING":
            # Answered with the context the ping carried (after its 2-byte TTL).
            self.transport.write(command(b"PONG", body[1 + body[0] + 2:]))


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


async def connect(path: str, socket_type: str) -> Peer:
    """Connect to the ZeroMQ socket listening at ``path`` and finish the handshake."""
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_unix_connection(lambda: Peer(socket_type), path)
    try:
        await peer.ready
    except BaseException:
        peer.close()
        raise
    return peer
