"""A streaming multipart/form-data reader: parts arrive as (headers, async chunks) in order.

Uploads can be large, so the parser never holds a whole part: it scans for the boundary
across chunk edges and hands body bytes on as soon as they cannot be part of a boundary
(as bytes-like pieces: views of what was read, where they can be).
"""

from __future__ import annotations

from typing import AsyncIterator, Dict, Optional, Tuple, Union

from .http import BadRequest, Body


def boundary_of(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip().strip('"')
    raise BadRequest("multipart body without a boundary")


def disposition(headers: Dict[str, str]) -> Dict[str, str]:
    """Parameters of Content-Disposition (``name``, ``filename``)."""
    out: Dict[str, str] = {}
    for param in headers.get("content-disposition", "").split(";")[1:]:
        name, _, value = param.strip().partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[name.lower()] = value
    return out


def _take(buf: bytearray, n: int) -> bytes:
    """The first ``n`` bytes of ``buf``, removed from it (one copy)."""
    with memoryview(buf) as view:
        out = bytes(view[:n])
    del buf[:n]
    return out


def _cut(buf: bytearray, delim: bytes) -> Optional[bytes]:
    """If ``buf`` holds ``delim``: the body before it (maybe empty), and both removed from
    ``buf``; else None and ``buf`` as it was."""
    at = buf.find(delim)
    if at < 0:
        return None
    head = _take(buf, at)
    del buf[:len(delim)]
    return head


class MultipartReader:
    def __init__(self, body: Body, boundary: str) -> None:
        self._body = body
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._buf = bytearray(b"\r\n")  # lets the first boundary match the same pattern
        self._eof = False
        self._finished = False

    async def _more(self) -> None:
        data = await self._body.read()
        if not data:
            self._eof = True
        self._buf += data

    async def parts(self) -> AsyncIterator[Tuple[Dict[str, str], AsyncIterator[Union[bytes, memoryview]]]]:
        # Skip the preamble up to the first delimiter.
        while True:
            at = self._buf.find(self._delim)
            if at >= 0:
                del self._buf[: at + len(self._delim)]
                break
            if self._eof:
                raise BadRequest("multipart body has no parts")
            del self._buf[: max(0, len(self._buf) - len(self._delim))]
            await self._more()
        while True:
            while len(self._buf) < 2 and not self._eof:
                await self._more()
            if self._buf[:2] == b"--":
                self._finished = True
                return  # closing delimiter
            headers = await self._headers()
            chunks = self._part_body()
            yield headers, chunks
            async for _ in chunks:  # drain whatever the consumer left unread
                pass

    async def _headers(self) -> Dict[str, str]:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if self._eof:
                raise BadRequest("multipart part headers cut short")
            await self._more()
        block = bytes(self._buf[:end]).decode("utf-8", "replace")
        del self._buf[: end + 4]
        headers: Dict[str, str] = {}
        for line in block.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers

    async def _part_body(self) -> AsyncIterator[Union[bytes, memoryview]]:
        """The part's body, as bytes-like pieces, up to the next delimiter.

        A new read is searched where it lies (bytes.find runs at memory speed) and handed on
        as views of itself, never appended to a buffer first: only the few bytes at its end
        that could begin a delimiter are held back, and a delimiter straddling two reads is
        found by searching just the seam between them."""
        delim = self._delim
        keep = len(delim)
        buf = self._buf
        head = _cut(buf, delim)
        if head is not None:
            if head:
                yield head
            return
        while True:
            # Invariant: buf holds no whole delimiter, so all but its last keep - 1 bytes
            # are body.
            if len(buf) >= keep:
                yield _take(buf, len(buf) - (keep - 1))
            data = await self._body.read()
            if not data:
                self._eof = True
                raise BadRequest("multipart part not closed by a boundary")
            if len(data) < keep:
                # A short read: too short to hold what is left of a delimiter begun in buf.
                buf += data
                head = _cut(buf, delim)
                if head is not None:
                    if head:
                        yield head
                    return
                continue
            if buf:
                # A delimiter begun in buf ends within data's first keep - 1 bytes.
                seam = bytes(buf) + data[: keep - 1]
                at = seam.find(delim)
                if at >= 0:
                    if at:
                        yield bytes(buf[:at])
                    rest = data[at + keep - len(buf):]
                    buf.clear()
                    buf += rest
                    return
            at = data.find(delim)
            view = memoryview(data)
            if buf:   # none begins in it: all body
                yield bytes(buf)
                buf.clear()
            if at >= 0:
                if at:
                    yield view[:at]
                buf += view[at + keep:]
                return
            cut = len(data) - (keep - 1)
            yield view[:cut]
            buf += view[cut:]
