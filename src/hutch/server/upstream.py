"""The server's line to one sandbox's agent: keep-alive HTTP/1.1 over its unix socket.

Every sandbox gets one :class:`AgentLink`. The data-plane proxy borrows pooled connections
from it (a new connection per request would add a connect and an accept to every command), and
the manager uses it to wait for a new agent and to hand it the sandbox's settings (``/init``).

The client is deliberately small and hand-written: it is on the path of every command and
file operation, and a general-purpose client cost ~2 ms per request here against ~0.1 ms for
this one. It streams both ways without buffering: request body chunks are written as they
arrive, response body bytes are yielded as they are read. Everything it parses comes from inside
a sandbox, so sizes are bounded and anything malformed closes the connection.

This is the seam named in the architecture: today the agent is reached through a socket that a
bind mount carries out of the sandbox; a TCP variant with a token only needs another link.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
from pathlib import Path
from typing import AsyncIterator

from hutch.errors import SandboxError
from hutch.runtime.agent_socket import pinned_socket

AGENT_SOCKET = "/run/hutch/agent.sock"   # inside the sandbox
INTERPRETER_SOCKET = "/run/hutch/interpreter.sock"
CODE_INTERPRETER_PORT = 49999     # the port E2B's code interpreter SDK talks to
DEFAULT_USER = "user"                    # who commands run as unless a request names a user
_COALESCE = 64 * 1024   # a bytes body up to this size is sent with the head
_MAX_HEAD = 64 * 1024
_MAX_IDLE = 16
#: How much of a body one read takes, and the connection's read-ahead (the stream reader pauses
#: the socket at twice its limit). A big file moves in as few passes through the event loop as
#: the socket allows: at 64 KiB a relayed 1 GiB download took 16,000 of them.
_READ = 1024 * 1024


class UpstreamError(Exception):
    """The agent's connection failed or it answered something that is not HTTP/1.1."""


class UpstreamResponse:
    def __init__(self, link: "Upstream", conn: "_Conn", status: int,
                 headers: list[tuple[bytes, bytes]], body_kind: str, length: int,
                 reusable: bool) -> None:
        self.status = status
        self.headers = headers            # (lowercase name, value), hop-by-hop included
        self._link, self._conn = link, conn
        self._kind, self._left, self._reusable = body_kind, length, reusable
        self._done = body_kind == "none"

    async def aiter(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives (chunk framing removed)."""
        try:
            async for piece in self._body():
                yield piece
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise UpstreamError(f"bad body from the agent: {exc!r}") from None

    async def _body(self) -> AsyncIterator[bytes]:
        r = self._conn.reader
        if self._kind == "length" and self._left > _READ:
            # A big body (a file): what the stream reader holds, then the pieces as the loop
            # reads them, taken past the reader (see _Pieces).
            data = await r.read(min(self._left, _DRAIN))
            if not data:
                raise UpstreamError("the agent closed the connection mid-body")
            self._left -= len(data)
            pieces = _Pieces.take(self._conn.writer.transport, self._left) if self._left else None
            try:
                yield data
                while self._left > 0:
                    data = await pieces.next()
                    if not data:
                        raise UpstreamError("the agent closed the connection mid-body")
                    self._left -= len(data)
                    yield data
            finally:
                if pieces is not None:
                    pieces.restore()
        elif self._kind == "length":
            while self._left > 0:
                data = await r.read(min(self._left, _READ))
                if not data:
                    raise UpstreamError("the agent closed the connection mid-body")
                self._left -= len(data)
                yield data
        elif self._kind == "chunked":
            while True:
                line = await r.readuntil(b"\r\n")
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 16:
                    raise UpstreamError("bad chunk size from the agent")
                size = int(size_text, 16)
                if size == 0:
                    while (await r.readuntil(b"\r\n")) != b"\r\n":
                        pass   # trailers: not forwarded
                    break
                while size > 0:
                    data = await r.read(min(size, _READ))
                    if not data:
                        raise UpstreamError("the agent closed the connection mid-chunk")
                    size -= len(data)
                    yield data
                if await r.readexactly(2) != b"\r\n":
                    raise UpstreamError("bad chunk framing from the agent")
        elif self._kind == "eof":
            while data := await r.read(_READ):
                yield data
        self._done = True

    async def read(self) -> bytes:
        return b"".join([c async for c in self.aiter()])

    def close(self) -> None:
        """Give the connection back if the exchange completed cleanly, else drop it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._done and self._reusable:
            self._link._release(conn)
        else:
            conn.close()


#: A read of this size empties the stream reader (it pauses the socket at twice its limit, and
#: one socket read adds at most 256 KiB).
_DRAIN = 8 * _READ


class _Pieces(asyncio.Protocol):
    """The rest of a Content-Length body, taken off a connection past its stream reader.

    The stream reader appends each piece the loop reads to one buffer and copies every read
    back out: on a relayed download, two of the three copies the server made of each byte
    (a third of its CPU). While a big body comes in, this protocol stands in for the
    reader's: it keeps the pieces as the loop made them and hands them on whole, and gives
    the connection back the moment the body's last byte is in (whatever follows, and the
    end of the connection, go to the reader as if it had seen them itself). Read-ahead is
    bounded like the reader's. Taken only when the reader holds nothing."""

    def __init__(self, transport: asyncio.Transport, want: int) -> None:
        self._transport = transport
        self._stream = transport.get_protocol()
        self._want = want                  # body bytes not yet received
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._paused = self._restored = False

    @classmethod
    def take(cls, transport: asyncio.Transport, want: int) -> "_Pieces":
        pieces = cls(transport, want)
        transport.set_protocol(pieces)
        return pieces

    def restore(self) -> None:
        """Hand the connection back to its stream reader (at the body's end, or when the
        body is abandoned)."""
        if self._restored:
            return
        self._restored = True
        self._transport.set_protocol(self._stream)
        if self._paused:
            self._paused = False
            self._transport.resume_reading()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        extra = b""
        if len(data) > self._want:
            data, extra = data[:self._want], data[self._want:]
        if data:
            self._pieces.append(data)
            self._size += len(data)
            self._want -= len(data)
            self._wake()
        if self._want == 0:
            self.restore()
            if extra:
                self._stream.data_received(extra)
        elif not self._paused and self._size > 2 * _READ:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self):
        self._eof = True
        self._wake()
        self.restore()
        return self._stream.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._eof = True
        self._exc = exc
        self._wake()
        self.restore()
        self._stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream.pause_writing()

    def resume_writing(self) -> None:
        self._stream.resume_writing()

    async def next(self) -> bytes:
        """The next piece (or all that came since the last); b"" once the connection
        ended without more."""
        while not self._pieces:
            if self._eof:
                if self._exc is not None:
                    raise self._exc
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        # All that is waiting, in one: the client's side is written (and woken) once for it.
        data = self._pieces.popleft() if len(self._pieces) == 1 else b"".join(self._pieces)
        self._pieces.clear()
        self._size -= len(data)
        if self._paused and self._size <= _READ:
            self._paused = False
            self._transport.resume_reading()
        return data


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


def _parse_head(head: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise UpstreamError(f"bad status line from the agent: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise UpstreamError("bad header line from the agent")
        headers.append((name.lower(), value.strip()))
    return int(parts[1]), headers


#: The send buffer of the server's end of an agent's socket. A unix socket's sender buffer is
#: what bounds the data in flight; at the kernel's default (~200 KiB) every relayed upload
#: piece of a few hundred KiB left a remainder for asyncio to copy and send later.
_SEND_BUFFER = 2 * 1024 * 1024


_SO_SNDBUFFORCE = 32    # Linux; the socket module has no name for it


def _widen_send_buffer(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SEND_BUFFER)
            return
        except OSError:
            continue   # SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF is capped by wmem_max


class Upstream:
    """A pool of keep-alive HTTP/1.1 connections to one endpoint inside a sandbox."""

    # Whether a connection that carried a streamed (chunked) response may serve another
    # request. See AgentLink.
    reuse_after_stream = True

    def __init__(self) -> None:
        self._idle: list[_Conn] = []
        self._closed = False

    async def open_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise NotImplementedError

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _release(self, conn: _Conn) -> None:
        if self._closed or len(self._idle) >= _MAX_IDLE or conn.reader.at_eof():
            conn.close()
        else:
            self._idle.append(conn)

    async def _connect(self) -> tuple[_Conn, bool]:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn, True
            conn.close()
        try:
            reader, writer = await self.open_connection()
        except OSError as exc:
            raise UpstreamError(f"cannot connect: {exc}") from exc
        return _Conn(reader, writer), False

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes | AsyncIterator[bytes] | None = None,
                      chunked: bool = False) -> UpstreamResponse:
        """Send a request; returns once the response head is in. ``headers`` must carry the
        body's framing (Content-Length, or ``chunked=True`` for a streamed body of unknown
        length); hop-by-hop headers must already be removed."""
        if self._closed:
            raise UpstreamError("the sandbox is gone")
        replayable = body is None or isinstance(body, bytes)
        for attempt in (0, 1):
            conn, reused = await self._connect()
            try:
                return await self._exchange(conn, method, target, headers, body, chunked)
            except (UpstreamError, OSError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as exc:
                conn.close()
                # A pooled connection the agent closed meanwhile fails before any answer:
                # try once more on a fresh one when the body can be sent again.
                if attempt == 0 and reused and replayable and not isinstance(exc, _Answered):
                    continue
                if isinstance(exc, UpstreamError):
                    raise
                raise UpstreamError(f"agent connection failed: {exc!r}") from exc
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def call(self, method: str, path: str, body: dict | None = None,
                   timeout: float = 10.0, token: str | None = None) -> tuple[int, bytes]:
        """One small JSON request (hutch's own calls to a sandbox): status and body."""
        headers = [(b"host", b"agent")]
        if token:
            headers.append((b"x-access-token", token.encode()))
        content = b""
        if body is not None:
            content = json.dumps(body).encode()
            headers.append((b"content-type", b"application/json"))
        if body is not None or method in ("POST", "PUT"):
            headers.append((b"content-length", str(len(content)).encode()))

        async def exchange() -> tuple[int, bytes]:
            resp = await self.request(method, path.encode(), headers, content)
            try:
                return resp.status, await resp.read()
            finally:
                resp.close()

        try:
            return await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise UpstreamError(f"the agent did not answer {method} {path} in {timeout} s") \
                from None

    async def _exchange(self, conn: _Conn, method: str, target: bytes, headers, body,
                        chunked: bool) -> UpstreamResponse:
        w = conn.writer
        head = [method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        if chunked:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        # The head leaves with the body's first piece, in one write: each write wakes the
        # agent, which would otherwise read the head alone and go back to wait for the body.
        first: bytes | None = b"".join(head)
        if isinstance(body, bytes):
            if body and len(body) <= _COALESCE:
                w.write(first + body)
            else:
                w.write(first)
                if body:
                    w.write(body)
        elif body is not None:
            async for piece in body:
                if not piece:
                    continue
                if chunked:
                    piece = b"%x\r\n%s\r\n" % (len(piece), piece)
                if first is not None:
                    piece, first = first + piece, None
                w.write(piece)
                await w.drain()
            if first is not None:
                w.write(first)
            if chunked:
                w.write(b"0\r\n\r\n")
        else:
            w.write(first)
        await w.drain()
        while True:
            try:
                raw = await conn.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                raise UpstreamError("the agent closed the connection without answering") \
                    from exc
            if len(raw) > _MAX_HEAD:
                raise _Answered("the agent's response head is too large")
            try:
                status, resp_headers = _parse_head(raw)
            except UpstreamError as exc:
                raise _Answered(str(exc)) from None
            if status != 100 and not 100 < status < 200:
                break
        kind, length, reusable = "eof", 0, True
        te = cl = None
        for name, value in resp_headers:
            if name == b"transfer-encoding":
                te = value.lower()
            elif name == b"content-length":
                cl = value
            elif name == b"connection" and value.lower() == b"close":
                reusable = False
        if method == "HEAD" or status in (204, 304):
            kind = "none"
        elif te is not None:
            if te != b"chunked":
                raise _Answered("unsupported transfer-encoding from the agent")
            kind = "chunked"
            reusable = self.reuse_after_stream
        elif cl is not None:
            if not cl.isdigit() or len(cl) > 15:
                raise _Answered("bad content-length from the agent")
            kind, length = "length", int(cl)
            if length == 0:
                kind = "none"
        else:
            reusable = False
        return UpstreamResponse(self, conn, status, resp_headers, kind, length, reusable)


class PortLink(Upstream):
    """A TCP port of a sandbox, reached over the bridge at the sandbox's address."""

    def __init__(self, address: str, port: int) -> None:
        super().__init__()
        self.address, self.port = address, port

    async def open_connection(self):
        return await asyncio.open_connection(self.address, self.port, limit=_READ)


class SocketLink(Upstream):
    """A unix socket in the sandbox's run dir (the agent's, the code interpreter's)."""

    def __init__(self, socket: Path) -> None:
        super().__init__()
        self.socket = socket

    async def open_connection(self):
        # Root inside the sandbox can replace a socket in the run dir with a symlink to any
        # host socket: connect to the inode that is there, never through a link.
        try:
            with pinned_socket(self.socket) as target:
                reader, writer = await asyncio.open_unix_connection(target, limit=_READ)
        except SandboxError as exc:
            raise UpstreamError(f"cannot connect: {exc}") from None
        _widen_send_buffer(writer)
        return reader, writer


class TunnelLink(SocketLink):
    """A TCP port of a sandbox without a network (mode 'none'), reached through its agent: a
    ``CONNECT 127.0.0.1:<port>`` over the agent's socket, after which the connection is the
    app's. The token is the sandbox's access token (the agent checks it)."""

    def __init__(self, socket: Path, port: int, token: str | None) -> None:
        super().__init__(socket)
        self.port, self.token = port, token

    async def open_connection(self):
        reader, writer = await super().open_connection()
        try:
            head = f"CONNECT 127.0.0.1:{self.port} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            if self.token:
                head += f"X-Access-Token: {self.token}\r\n"
            writer.write((head + "\r\n").encode())
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status, _ = _parse_head(answer)
            if status != 200:
                raise UpstreamError(f"the agent refused the tunnel ({status})")
        except BaseException:
            writer.close()
            raise
        return reader, writer


class AgentLink(SocketLink):
    """The agent's unix socket, plus the calls the manager makes on a new sandbox."""

    def __init__(self, socket: Path) -> None:
        super().__init__(socket)
        self.ready_after: float | None = None   # seconds from start() to an accepted /init


    async def health(self, timeout: float = 5.0) -> bool:
        try:
            status, _ = await self.call("GET", "/health", timeout=timeout)
        except (UpstreamError, OSError, asyncio.IncompleteReadError):
            return False
        return status in (200, 204)

    async def init(self, env_vars: dict[str, str], access_token: str | None,
                   default_user: str, current_token: str | None = None,
                   default_workdir: str | None = None) -> None:
        """Set the sandbox's env vars, access token and default user.

        An agent initialised before (after a server restart, or a pooled sandbox being handed
        out with a new token) wants its current token to accept new settings."""
        settings = {"envVars": env_vars, "accessToken": access_token,
                    "defaultUser": default_user}
        if default_workdir:
            settings["defaultWorkdir"] = default_workdir
        status, body = await self.call("POST", "/init", settings,
                                        token=current_token or access_token)
        if status >= 300:
            raise SandboxError(f"agent refused /init: {status} {body[:200]!r}")

    async def start(self, env_vars: dict[str, str], access_token: str | None,
                    default_user: str, deadline: float,
                    default_workdir: str | None = None) -> None:
        """Wait for a new agent's socket and hand it its settings (accepted: it is healthy).

        ``deadline`` is monotonic. Polls every millisecond (a stat each time, next to
        nothing): the agent's socket appears tens of milliseconds after the container starts,
        and any slack in noticing it is added to every create.
        """
        delay = 0.001
        t0 = time.perf_counter()
        while True:
            if self.socket.exists():
                try:
                    await self.init(env_vars, access_token, default_user,
                                    default_workdir=default_workdir)
                    self.ready_after = time.perf_counter() - t0
                    break
                except UpstreamError as exc:
                    if "cannot connect" not in str(exc):
                        raise SandboxError(f"the sandbox agent failed: {exc}") from None
                    # bound but not yet listening: retry
            if time.monotonic() + delay > deadline:
                raise SandboxError(f"the sandbox agent did not come up (socket {self.socket})")
            await asyncio.sleep(delay)
        # The agent's answer to /init is its health check: no separate round trip.


class _Answered(UpstreamError):
    """The agent answered, but wrongly: never retried."""
