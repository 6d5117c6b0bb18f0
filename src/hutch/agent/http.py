"""A small HTTP/1.1 server on asyncio streams, shaped for the agent's needs.

Why not a library: the agent runs on the template's own Python with the stdlib only. What it
needs is narrow but strict: keep-alive, chunked bodies in both directions streamed without
buffering, and prompt notice of a client that went away so the work behind a stream stops
(a watcher's inotify fd, a subscription to a process's output).
"""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple, Union

from ..errors import InvalidArgumentError
from ..protocol.envelope import dumps

MAX_HEAD = 64 * 1024
#: The stream reader's buffer limit. It also caps the request head, but mainly sets how much
#: body the transport reads ahead before pausing: small values make uploads crawl.
READ_LIMIT = 1024 * 1024

_REASONS = {
    100: "Continue", 200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    409: "Conflict", 411: "Length Required", 413: "Payload Too Large", 415: "Unsupported Media Type",
    429: "Too Many Requests", 499: "Client Closed Request", 500: "Internal Server Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable",
    504: "Gateway Timeout", 507: "Insufficient Storage",
}


_HEX = frozenset("0123456789abcdefABCDEF")


def unquote(text: str, plus: bool = False) -> str:
    """Percent-decode a URL component as UTF-8 (``plus``: ``+`` means space, as in queries).

    Hand-written because ``urllib.parse`` (and the ``ipaddress`` it pulls in) would add
    milliseconds to the agent's start-up for two small functions.
    """
    if plus:
        text = text.replace("+", " ")
    if "%" not in text:
        return text
    head, *rest = text.split("%")
    out = bytearray(head.encode())
    for part in rest:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:].encode()
        else:
            out += b"%" + part.encode()
    return out.decode("utf-8", "replace")


def parse_query(query: str) -> Dict[str, List[str]]:
    """``a=1&b=x%20y&a=2`` -> ``{"a": ["1", "2"], "b": ["x y"]}`` (blank values kept)."""
    out: Dict[str, List[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        out.setdefault(unquote(name, plus=True), []).append(unquote(value, plus=True))
    return out


def _error_json(status: int, message: str) -> bytes:
    import json

    return json.dumps({"code": status, "message": message}).encode()


class BadRequest(InvalidArgumentError):
    """The peer broke HTTP/1.1; the connection is answered with 400 and closed."""


#: A read of this size takes everything the stream reader has read ahead (it pauses the socket
#: once it holds twice READ_LIMIT, and one socket read adds at most 256 KiB).
DRAIN = 4 * READ_LIMIT


def receive_into(fd: int, view: memoryview, idle: float) -> int:
    """Read what socket ``fd`` (non-blocking) has into ``view``, waiting up to ``idle`` seconds
    for something to arrive; blocking, for a worker thread. 0 means nothing came in time;
    the peer's end of the stream raises ConnectionResetError."""
    import select

    while True:
        try:
            n = os.readv(fd, [view])
        except (BlockingIOError, InterruptedError):
            poller = select.poll()
            poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
            if not poller.poll(idle * 1000):
                return 0
            continue
        if n == 0:
            raise ConnectionResetError("client closed the connection mid-body")
        return n


class Body:
    """The request body as an async stream of chunks (Content-Length or chunked).

    Reading is lazy: nothing is read until the handler asks, so a client-streaming RPC sees each
    envelope as it arrives.
    """

    def __init__(self, conn: "_Connection", length: Optional[int], chunked: bool, expect: bool):
        self._conn = conn
        self._left = length or 0
        self._chunked = chunked
        self._expect = expect
        self.done = not chunked and not length

    async def _continue(self) -> None:
        if self._expect:
            self._expect = False
            self._conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._conn.writer.drain()

    async def read(self, max_bytes: int = 1024 * 1024) -> bytes:
        """The next piece of the body; ``b""`` at its end. Raises ConnectionError if cut short."""
        if self.done:
            return b""
        await self._continue()
        reader = self._conn.reader
        if not self._chunked:
            data = await reader.read(min(self._left, max_bytes))
            if not data:
                raise ConnectionResetError("client closed the connection mid-body")
            self._left -= len(data)
            self.done = self._left == 0
            return data
        if self._left == 0:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ConnectionResetError("client closed the connection mid-body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("bad chunk size") from None
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing we use
                self.done = True
                return b""
            self._left = size
        data = await reader.read(min(self._left, max_bytes))
        if not data:
            raise ConnectionResetError("client closed the connection mid-body")
        self._left -= len(data)
        if self._left == 0:
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("chunk not terminated by CRLF")
        return data

    @property
    def left(self) -> int:
        """Bytes of a Content-Length body not yet read (0 for a chunked one)."""
        return 0 if self._chunked else self._left

    def detach(self) -> int:
        """Stop the event loop reading this connection and return its socket's fd, so the
        rest of a Content-Length body can be read straight off the socket into a buffer of
        the caller's (in a worker thread, without a pass through the loop per piece). Returns
        -1 when that is not possible: a chunked body, nothing left, no socket, or bytes
        already read ahead into the stream reader (read those first; a read of
        :data:`DRAIN` bytes takes all of them). Undo with :meth:`attach`; account what was
        read with :meth:`advance`."""
        if self._chunked or self.done or self._expect:
            return -1
        reader = self._conn.reader
        transport = self._conn.writer.transport
        sock = transport.get_extra_info("socket")
        buffered = getattr(reader, "_buffer", None)
        if sock is None or buffered is None or len(buffered) or reader.at_eof():
            return -1
        if transport.is_closing():
            return -1
        transport.pause_reading()
        return sock.fileno()

    def advance(self, n: int) -> None:
        self._left -= n
        self.done = self._left == 0

    def attach(self) -> None:
        transport = self._conn.writer.transport
        if not transport.is_closing():
            transport.resume_reading()

    async def read_all(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts: List[bytes] = []
        total = 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            total += len(data)
            if total > limit:
                raise BadRequest("request body too large")
            parts.append(data)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            data = await self.read()
            if not data:
                return
            yield data


class Request:
    """A parsed request head plus its lazy :class:`Body`."""

    def __init__(self, method: str, target: str, headers: Dict[str, str], body: Body):
        self.method = method
        self.target = target
        raw_path, _, query = target.partition("?")
        raw_path = raw_path.partition("#")[0]
        if "://" in raw_path:  # absolute-form request target
            raw_path = "/" + raw_path.split("://", 1)[1].partition("/")[2]
        self.path = unquote(raw_path)
        self.query: Dict[str, List[str]] = parse_query(query.partition("#")[0])
        self.headers = headers  # lower-cased names; repeated headers joined by ", "
        self.body = body

    def arg(self, name: str, default: Optional[str] = None) -> Optional[str]:
        values = self.query.get(name)
        return values[0] if values else default


class Response:
    """Status, headers and a body: bytes, an async iterator of chunks, or a :class:`FileBody`."""

    def __init__(
        self,
        status: int = 200,
        body: Union[bytes, AsyncIterator[bytes], FileBody] = b"",
        headers: Optional[List[Tuple[str, str]]] = None,
        content_type: Optional[str] = None,
    ):
        self.status = status
        self.body = body
        self.headers = list(headers or [])
        if content_type:
            self.headers.append(("Content-Type", content_type))


def http_error(status: int, message: str) -> Response:
    """A JSON error answer, ``{"code": status, "message": message}``, as envd words its own."""
    return Response(status, dumps({"code": status, "message": message}), content_type="application/json")


class FileBody:
    """A response body taken straight from an open regular file: ``size`` bytes from offset 0,
    sent with sendfile(2) under a Content-Length.

    The kernel moves the bytes from the page cache to the socket: no read into Python objects,
    no chunk framing, a handful of calls per MiB instead of several copies. ``advise(offset,
    length)``, when given, is awaited with the range about to be sent, one window ahead, so the
    file's pages are read in by a worker thread rather than by sendfile on the event loop.
    The fd is closed once the body is sent or abandoned."""

    WINDOW = 8 * 1024 * 1024

    def __init__(self, fd: int, size: int,
                 advise: Optional[Callable[[int, int], Awaitable[None]]] = None) -> None:
        self.fd, self.size, self.advise = fd, size, advise

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            try:
                os.close(fd)
            except OSError:
                pass


class Tunnel(Response):
    """The answer to a ``CONNECT``: once ``200`` is written, the client's connection and
    ``reader``/``writer`` (the target's) are spliced together until either side ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(200)
        self.reader, self.writer = reader, writer


Handler = Callable[[Request], Awaitable[Response]]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler):
        self.reader = reader
        self.writer = writer
        self.handler = handler
        self.prefix = b""

    async def serve(self) -> None:
        try:
            while await self._one():
                pass
            await self._linger()
        except (ConnectionError, asyncio.IncompleteReadError, BadRequest, asyncio.LimitOverrunError):
            pass
        finally:
            self.writer.close()

    async def _linger(self) -> None:
        """Half-close, then discard what the client still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the response we just wrote before the client reads it.
        """
        if self.writer.is_closing() or not self.writer.can_write_eof():
            return
        self.writer.write_eof()
        try:
            async def discard():
                while await self.reader.read(64 * 1024):
                    pass

            await asyncio.wait_for(discard(), 1.0)
        except (asyncio.TimeoutError, ConnectionError):
            pass

    async def _read_head(self) -> Optional[bytes]:
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial and not self.prefix:
                return None  # clean close between requests
            raise
        head, self.prefix = self.prefix + head, b""
        if len(head) > MAX_HEAD:
            raise BadRequest("request head too large")
        return head

    async def _one(self) -> bool:
        head = await self._read_head()
        if head is None:
            return False
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise BadRequest("bad request line") from None
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("bad header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = None
        if not chunked and "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise BadRequest("bad content-length") from None
        expect = headers.get("expect", "").lower() == "100-continue"
        body = Body(self, length, chunked, expect)
        request = Request(method, target, headers, body)
        keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        try:
            response = await self.handler(request)
        except BadRequest as exc:
            response = Response(400, _error_json(400, str(exc)), content_type="application/json")
            keep_alive = False
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in a handler must not kill the agent
            import sys
            import traceback

            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
            response = Response(500, _error_json(500, f"internal error: {type(exc).__name__}"),
                                content_type="application/json")
            keep_alive = False
        if not body.done and keep_alive:
            # Leftover body bytes would be read as the next request. Skip a small known rest;
            # otherwise drop the connection.
            if not body._chunked and body._left <= 64 * 1024:
                try:
                    await asyncio.wait_for(body.read_all(), 5)
                except (asyncio.TimeoutError, BadRequest):
                    keep_alive = False
            else:
                keep_alive = False
        if isinstance(response, Tunnel):
            await self._splice(response)
            return False
        try:
            await self._write(response, keep_alive, method == "HEAD", body.done)
        finally:
            if isinstance(response.body, FileBody):
                response.body.close()
        return keep_alive

    async def _splice(self, tunnel: Tunnel) -> None:
        self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       first: bytes = b"") -> None:
            try:
                if first:
                    dst.write(first)
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()
            except (ConnectionError, OSError):
                pass

        try:
            await asyncio.gather(pump(self.reader, tunnel.writer, self.prefix),
                                 pump(tunnel.reader, self.writer))
        finally:
            self.prefix = b""
            tunnel.writer.close()

    async def _write(
        self, response: Response, keep_alive: bool, head_only: bool, body_done: bool
    ) -> None:
        w = self.writer
        status = response.status
        out = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"]
        for name, value in response.headers:
            out.append(f"{name}: {value}\r\n")
        if not keep_alive:
            out.append("Connection: close\r\n")
        body = response.body
        if isinstance(body, FileBody):
            out.append(f"Content-Length: {body.size}\r\n\r\n")
            w.write("".join(out).encode("latin-1"))
            if not head_only:
                await self._send_file(body)
            await w.drain()
            return
        if isinstance(body, (bytes, bytearray)):
            if status != 204 and status >= 200:
                out.append(f"Content-Length: {len(body)}\r\n")
            out.append("\r\n")
            w.write("".join(out).encode("latin-1") + (b"" if head_only else bytes(body)))
            await w.drain()
            return
        out.append("Transfer-Encoding: chunked\r\n\r\n")
        head = "".join(out).encode("latin-1")
        if body_done:
            await self._stream(body, head)
        else:
            await self._pump(body, head)

    async def _send_file(self, body: FileBody) -> None:
        """Send ``body`` with sendfile(2), a window at a time, the next window's pages read in
        meanwhile. A file that shrank under us cannot honour the Content-Length already sent:
        the connection is dropped, so the client sees a cut body rather than a short one."""
        loop = asyncio.get_running_loop()
        transport = self.writer.transport
        window = FileBody.WINDOW
        with os.fdopen(body.fd, "rb", closefd=False) as f:
            ahead = None
            if body.advise is not None:
                ahead = asyncio.ensure_future(body.advise(0, window))
            offset = 0
            try:
                while offset < body.size:
                    n = min(window, body.size - offset)
                    if ahead is not None:
                        await ahead
                        ahead = None
                        if offset + n < body.size:
                            ahead = asyncio.ensure_future(body.advise(offset + n, window))
                    if transport.is_closing():
                        raise ConnectionResetError("client went away during a download")
                    sent = await loop.sendfile(transport, f, offset, n)
                    offset += sent
                    if sent < n:
                        transport.abort()
                        raise ConnectionResetError("the file shrank while it was being sent")
            finally:
                if ahead is not None:
                    ahead.cancel()
                    await asyncio.gather(ahead, return_exceptions=True)

    async def _stream(self, body: AsyncIterator[bytes], head: bytes) -> None:
        """Write chunks as the iterator yields them; stop it at once if the client leaves.

        While a server stream runs the request body is finished, so any read on the socket
        returning EOF means the client is gone. The watcher's read is cancelled before the next
        request could arrive (a client sends it only after our last chunk).
        """
        pump = asyncio.ensure_future(self._pump(body, head))
        watch = asyncio.ensure_future(self.reader.read(1))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
            if not pump.done():
                gone = watch.cancelled() or watch.exception() is not None or not watch.result()
                if gone:
                    raise ConnectionResetError("client went away during a stream")
                self.prefix = watch.result()  # a pipelined request began: keep its first byte
                await pump
            elif watch.done() and not watch.cancelled() and watch.exception() is None:
                # The stream ended in the same turn as the next request's first byte arrived.
                self.prefix = watch.result()
        finally:
            for task in (pump, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        pump.result()

    async def _pump(self, body: AsyncIterator[bytes], head: bytes) -> None:
        """Write the head, each chunk and the terminator, coalescing what is ready together.

        Chunks produced within one turn of the event loop (say a process's last output, its
        `end` event and the end-stream message) leave in one write: the flush runs once the
        producer has to wait. Backpressure still applies through ``drain()``.
        """
        w = self.writer
        loop = asyncio.get_running_loop()
        pending = [head]
        scheduled = False

        def flush() -> None:
            nonlocal scheduled
            scheduled = False
            if pending and not w.is_closing():
                w.write(b"".join(pending))
            pending.clear()

        try:
            async for chunk in body:
                if not chunk:
                    continue
                pending.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if not scheduled:
                    scheduled = True
                    loop.call_soon(flush)
                if w.transport.get_write_buffer_size() > 256 * 1024 or len(pending) > 64:
                    flush()
                    await w.drain()
            pending.append(b"0\r\n\r\n")
            flush()
            await w.drain()
        finally:
            pending.clear()
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
    """Serve one client connection until it closes (the callback for ``asyncio.start_server``)."""
    await _Connection(reader, writer, handler).serve()
