"""The data-plane wire format as the SDK needs it: Connect envelopes and request shapes.

No I/O here. Streams are Connect-RPC with the JSON codec over HTTP/1.1: each message is a
5-byte header (flags, big-endian length) and a JSON payload; flag 0x02 marks the end-stream
message, which carries the error of a failed stream.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Dict, Iterator, List, Optional, Tuple

AGENT_PORT = 49983
KEEPALIVE_INTERVAL = 50  # seconds; the agent sends a keepalive event after this much silence
# A stream that stays silent for two keepalive intervals (plus slack) is dead.
STREAM_READ_TIMEOUT = 2 * KEEPALIVE_INTERVAL + 20

FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
_HEADER = struct.Struct(">BI")


def encode_envelope(message: dict, flags: int = 0) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(payload)) + payload


class EnvelopeDecoder:
    """Splits a byte stream into envelopes; chunk boundaries can fall anywhere."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Tuple[int, dict]]:
        self._buffer += data
        while len(self._buffer) >= _HEADER.size:
            flags, length = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[_HEADER.size:end])
            del self._buffer[:end]
            if flags & FLAG_COMPRESSED:
                raise ValueError("compressed Connect envelope, but compression was not negotiated")
            yield flags, (json.loads(payload) if payload else {})

    @property
    def pending(self) -> int:
        return len(self._buffer)


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def user_header(user: Optional[str]) -> Dict[str, str]:
    """The agent picks the Linux user from Basic auth; no header means its default user."""
    if not user:
        return {}
    return {"Authorization": "Basic " + b64(f"{user}:")}


def timeout_header(timeout: Optional[float]) -> Dict[str, str]:
    """Connect's deadline header: the agent ends the call (and kills a process) at it."""
    if not timeout:
        return {}
    return {"Connect-Timeout-Ms": str(int(timeout * 1000))}


def process_config(cmd: str, args: List[str], envs: Optional[Dict[str, str]],
                   cwd: Optional[str]) -> dict:
    config: dict = {"cmd": cmd, "args": list(args)}
    if envs:
        config["envs"] = dict(envs)
    if cwd:
        config["cwd"] = cwd
    return config


def shell_command(cmd: str) -> Tuple[str, List[str]]:
    """Commands run through a bash login shell, as E2B does, so profiles and PATH apply."""
    return "/bin/bash", ["-l", "-c", cmd]


def selector(pid: int) -> dict:
    return {"pid": pid}
