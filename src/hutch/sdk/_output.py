"""How much of a command's output the SDK keeps for its result.

A command's output is streamed: callbacks and iteration see every chunk as it arrives and
nothing is buffered for them. What a handle *keeps* (``stdout``/``stderr``, the
``CommandResult``) is capped, so that ``yes`` or a runaway log cannot grow the client's
memory without bound: past ``OUTPUT_CAP`` characters per stream the rest is only counted,
and the kept text ends with a marker saying how much was left out.
"""

from __future__ import annotations

from typing import List, Optional

#: Characters of stdout, and separately of stderr, a command's result keeps by default.
OUTPUT_CAP = 16 * 1024 * 1024
MARKER = "\n[hutch: output truncated: {} more characters not kept]\n"


class RetainedOutput:
    """One stream's kept text: at most ``cap`` characters (None: no cap), then a count."""

    def __init__(self, cap: Optional[int]) -> None:
        if cap is not None and cap < 0:
            raise ValueError("max_output must be >= 0 or None")
        self.cap = cap
        self.parts: List[str] = []
        self.size = 0
        self.dropped = 0

    def add(self, text: str) -> None:
        if self.cap is not None and self.size + len(text) > self.cap:
            room = max(0, self.cap - self.size)
            self.dropped += len(text) - room
            text = text[:room]
        if text:
            self.parts.append(text)
            self.size += len(text)

    def text(self) -> str:
        kept = "".join(self.parts)
        return kept + MARKER.format(self.dropped) if self.dropped else kept
