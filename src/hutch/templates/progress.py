"""Reporting a template build as it goes.

A build takes tens of seconds, long enough that a silent `hutch serve` looks hung. The builder
reports phases and a completed fraction derived from what mmdebstrap and apt actually print;
a :class:`Progress` turns that into whatever the caller shows.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """Receives one build's progress. Calls come from the event loop's thread, in order."""

    def start(self, template: str) -> None:
        """A build of ``template`` begins."""

    def update(self, phase: str, fraction: float, detail: str = "") -> None:
        """The build is in ``phase`` and ``fraction`` (0..1, never decreasing) of it is done;
        ``detail`` is a short counter such as ``"37/87"``."""

    def finish(self, ok: bool, message: str = "") -> None:
        """The build ended; ``message`` says how (time and size, or the error)."""


class TerminalProgress:
    """A progress bar on a terminal, one line per phase elsewhere (logs, pipes, CI).

    On a TTY the bar is redrawn in place, at most every ``interval`` seconds, showing the
    percentage, the phase and its counter. Otherwise each phase change prints one line, so a
    log shows what happened without a flood of carriage returns.
    """

    def __init__(self, stream: TextIO | None = None, *, width: int = 30,
                 interval: float = 0.1, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.interval = interval
        isatty = getattr(self.stream, "isatty", None)
        self.tty = tty if tty is not None else bool(isatty and isatty())
        self._template = ""
        self._phase = ""
        self._drawn = 0.0
        self._started = 0.0

    def start(self, template: str) -> None:
        self._template = template
        self._phase = ""
        self._started = time.monotonic()
        if not self.tty:
            self._line(f"building template {template}")

    def update(self, phase: str, fraction: float, detail: str = "") -> None:
        pct = int(max(0.0, min(1.0, fraction)) * 100)
        if self.tty:
            now = time.monotonic()
            if phase == self._phase and now - self._drawn < self.interval:
                return
            self._drawn = now
            self._phase = phase
            filled = self.width * pct // 100
            bar = "#" * filled + "-" * (self.width - filled)
            text = f"{phase} {detail}".strip()
            self.stream.write(f"\r\x1b[2K{self._template} [{bar}] {pct:3d}% {text}")
            self.stream.flush()
        elif phase != self._phase:
            self._phase = phase
            self._line(f"template {self._template}: {pct:3d}% {phase}")

    def finish(self, ok: bool, message: str = "") -> None:
        elapsed = time.monotonic() - self._started
        outcome = "built" if ok else "FAILED"
        text = f"template {self._template} {outcome} in {elapsed:.1f} s"
        if message:
            text += f": {message}" if not ok else f" ({message})"
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self._line(text)

    def _line(self, text: str) -> None:
        self.stream.write(f"hutch: {text}\n")
        self.stream.flush()
