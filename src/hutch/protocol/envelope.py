"""Connect-RPC envelopes: the 5-byte framing of streaming request and response bodies.

An envelope is one flags byte, a 4-byte big-endian payload length and the payload (one JSON
message here). Flag 0x02 marks the *end-stream* message that closes a server stream; its JSON
is ``{}`` on success or ``{"error": {"code", "message"}}`` on failure. Over HTTP/1.1 chunk
boundaries have nothing to do with envelope boundaries, so :class:`EnvelopeDecoder` re-buffers.

Pure data: no I/O, importable on Python >= 3.9 with the stdlib only.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, NamedTuple, Optional

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02

_HEADER = struct.Struct(">BI")
HEADER_SIZE = _HEADER.size  # 5

#: Refuse envelopes larger than this: a peer announcing 4 GiB should not make us buffer it.
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


class EnvelopeError(ValueError):
    """The byte stream is not a valid sequence of envelopes."""


class Envelope(NamedTuple):
    """One decoded frame: its flags and raw payload bytes."""

    flags: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)

    def json(self) -> Any:
        """The payload parsed as JSON (``{}`` for an empty payload)."""
        return json.loads(self.payload) if self.payload else {}


def dumps(message: Any) -> bytes:
    """Compact JSON bytes for a message (the form every hutch encoder sends).

    Non-ASCII characters are escaped (``\\u00e9``): still canonical JSON, and the stdlib's
    ASCII encoder is several times faster than its UTF-8 one on the large base64 strings
    that carry process output.
    """
    return json.dumps(message, separators=(",", ":")).encode()


def encode_envelope(message: Any, *, flags: int = 0) -> bytes:
    """Frame one message. ``message`` is raw payload bytes or a JSON-able object."""
    payload = message if isinstance(message, (bytes, bytearray)) else dumps(message)
    return _HEADER.pack(flags, len(payload)) + bytes(payload)


def end_stream_message(
    error: Optional[Dict[str, Any]] = None, metadata: Optional[Dict[str, List[str]]] = None
) -> Dict[str, Any]:
    """The JSON of an end-stream message: ``{}``, or carrying ``error`` and ``metadata``."""
    out: Dict[str, Any] = {}
    if error is not None:
        out["error"] = error
    if metadata:
        out["metadata"] = metadata
    return out


def encode_end_stream(error: Optional[Dict[str, Any]] = None) -> bytes:
    """The closing envelope of a stream (flags 0x02); ``error`` is ``{"code","message"}``."""
    return encode_envelope(end_stream_message(error), flags=FLAG_END_STREAM)


class EnvelopeDecoder:
    """Incremental decoder: feed it arbitrary chunks, collect whole envelopes.

    >>> d = EnvelopeDecoder()
    >>> d.feed(b"\\x00\\x00\\x00")
    []
    >>> d.feed(b"\\x00\\x02{}")
    [Envelope(flags=0, payload=b'{}')]
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> List[Envelope]:
        """Add bytes; return every envelope completed by them, in order."""
        self._buf += data
        out: List[Envelope] = []
        while len(self._buf) >= HEADER_SIZE:
            flags, size = _HEADER.unpack_from(self._buf)
            if size > self._max:
                raise EnvelopeError(f"envelope of {size} bytes exceeds the limit of {self._max}")
            end = HEADER_SIZE + size
            if len(self._buf) < end:
                break
            out.append(Envelope(flags, bytes(self._buf[HEADER_SIZE:end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a whole envelope."""
        return len(self._buf)

    def close(self) -> None:
        """Declare the end of input; raise if it cut an envelope in half."""
        if self._buf:
            raise EnvelopeError(f"stream ended inside an envelope ({len(self._buf)} bytes left)")
