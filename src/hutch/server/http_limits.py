"""Limits on what a client may do before its request is even read: the size of a request's
head (request line and headers) and the time it may take to send it.

The HTTP parser hutch serves with (uvicorn on httptools) has neither: a client could send
headers without end, growing the server's memory, or send them a byte at a time and hold a
connection for ever (enough of those and no one else gets one). This protocol answers the
first with 431 and the second with 408, and closes the connection. Bodies are not affected:
uploads stream for as long as they take.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD = 64 * 1024        # bytes of request line and headers
HEAD_TIMEOUT = 30.0         # seconds from a request's first byte (or the connection) to its end


def protocol(head_timeout: float = HEAD_TIMEOUT, max_head: int = MAX_HEAD) -> type:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""

    class LimitedHttp(_LimitedHttp):
        HEAD_TIMEOUT = head_timeout
        MAX_HEAD = max_head

    return LimitedHttp


class _LimitedHttp(HttpToolsProtocol):
    HEAD_TIMEOUT = HEAD_TIMEOUT
    MAX_HEAD = MAX_HEAD

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True              # until the first request's headers are complete
        self._head_bytes = 0
        self._head_timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Counted after parsing: a chunk that completed the head may carry body bytes, and
        # those are not the head's. One that did not complete it is all head.
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.MAX_HEAD:
                self._refuse(b"431 Request Header Fields Too Large",
                             f"the request line and headers exceed {self.MAX_HEAD} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.HEAD_TIMEOUT, self._too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _too_slow(self) -> None:
        self._head_timer = None
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            if self._head_bytes or self.cycle is None:
                self._refuse(b"408 Request Timeout", f"the request was not sent within "
                                                     f"{self.HEAD_TIMEOUT:g} s")

    def _refuse(self, status: bytes, why: str) -> None:
        body = ('{"code": %s, "message": "%s"}' % (status[:3].decode(), why)).encode()
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                             b"content-length: " + str(len(body)).encode() +
                             b"\r\nconnection: close\r\n\r\n" + body)
        self.transport.close()
