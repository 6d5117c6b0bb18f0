"""Newline-delimited JSON: the framing of the code interpreter's ``/execute`` stream.

One JSON object per line. As with envelopes, HTTP chunks do not align with lines, so the
decoder keeps the unfinished tail between feeds. No I/O; stdlib only.
"""

from __future__ import annotations

import json
from typing import Any, List


def encode_line(message: Any) -> bytes:
    """One message as a compact JSON line ending in ``\\n``."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class NdjsonDecoder:
    """Feed arbitrary chunks; get back every complete line parsed. Blank lines are skipped."""

    def __init__(self, max_line: int = 64 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> List[Any]:
        self._buf += data
        out: List[Any] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buf[start:end]).strip()
            start = end + 1
            if line:
                out.append(json.loads(line))
        del self._buf[:start]
        if len(self._buf) > self._max:
            raise ValueError(f"NDJSON line longer than {self._max} bytes")
        return out

    def close(self) -> List[Any]:
        """End of input: a last line without its newline still counts."""
        tail = bytes(self._buf).strip()
        self._buf.clear()
        return [json.loads(tail)] if tail else []
