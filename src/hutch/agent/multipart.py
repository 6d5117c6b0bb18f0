"""A streaming multipart/form-data reader: parts arrive as (headers, async chunks) in order.

Uploads can be large, so the parser never holds a whole part: it scans for the boundary
across chunk edges and hands body bytes on as soon as they cannot be part of a boundary.
"""

from __future__ import annotations

from typing import AsyncIterator, Dict, Optional, Tuple

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

    async def parts(self) -> AsyncIterator[Tuple[Dict[str, str], AsyncIterator[bytes]]]:
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

    async def _part_body(self) -> AsyncIterator[bytes]:
        keep = len(self._delim)
        done: Optional[bool] = False
        while not done:
            at = self._buf.find(self._delim)
            if at >= 0:
                chunk = bytes(self._buf[:at])
                del self._buf[: at + keep]
                done = True
            else:
                if self._eof:
                    raise BadRequest("multipart part not closed by a boundary")
                safe = len(self._buf) - keep
                chunk = b""
                if safe > 0:
                    chunk = bytes(self._buf[:safe])
                    del self._buf[:safe]
                if not chunk:
                    await self._more()
                    continue
            if chunk:
                yield chunk
