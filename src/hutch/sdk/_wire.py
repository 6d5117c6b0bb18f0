"""The data-plane request shapes the SDK sends, on top of hutch.protocol's codecs.

No I/O here. Streams are Connect-RPC with the JSON codec over HTTP/1.1, framed by the
envelopes of ``hutch.protocol.envelope``.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

from hutch.protocol.envd import ENVD_PORT
from hutch.protocol.envelope import (  # noqa: F401 - re-exported for the transports
    FLAG_END_STREAM,
    EnvelopeDecoder,
    EnvelopeError,
    encode_envelope,
)
from hutch.protocol.protojson import b64decode, b64encode

AGENT_PORT = ENVD_PORT
KEEPALIVE_INTERVAL = 50  # seconds; the agent sends a keepalive event after this much silence
# A stream that stays silent for two keepalive intervals (plus slack) is dead.
STREAM_READ_TIMEOUT = 2 * KEEPALIVE_INTERVAL + 20


def b64(data: Union[bytes, str]) -> str:
    return b64encode(data.encode() if isinstance(data, str) else data)


def unb64(text: Optional[str]) -> bytes:
    return b64decode(text)


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
