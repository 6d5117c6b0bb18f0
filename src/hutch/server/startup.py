"""A template's start command, and its ready check, run in each new sandbox before the
create that made it returns.

The start command runs in the background for the sandbox's life (as the template's user, in
its directory, with the sandbox's environment); the ready command is then run again and again
until it succeeds, so a create answers only once, say, the template's web server listens.
Both go through the agent's process service, as the SDK's ``commands.run`` does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from hutch.errors import SandboxError
from hutch.protocol.envelope import EnvelopeDecoder, encode_envelope
from hutch.protocol.protojson import b64decode, b64encode

READY_TIMEOUT = 60.0       # seconds for the ready command to first succeed (a setting)
READY_INTERVAL = 0.2


def _request(command: str, user: str, cwd: Optional[str],
             token: Optional[str]) -> tuple[list, bytes]:
    process: dict[str, Any] = {"cmd": "/bin/bash", "args": ["-l", "-c", command]}
    if cwd:
        process["cwd"] = cwd
    body = encode_envelope({"process": process})
    headers = [(b"host", b"agent"), (b"content-type", b"application/connect+json"),
               (b"authorization", b"Basic " + b64encode(f"{user}:".encode()).encode()),
               (b"content-length", str(len(body)).encode())]
    if token:
        headers.append((b"x-access-token", token.encode()))
    return headers, body


async def _run(link: Any, command: str, user: str, cwd: Optional[str], token: Optional[str],
               wait: bool) -> tuple[Optional[int], str]:
    """Start ``command``; with ``wait``, its exit code and output (the last 2 KiB), else
    (None, "") once it has started (it keeps running after the stream is let go)."""
    headers, body = _request(command, user, cwd, token)
    resp = await link.request("POST", b"/process.Process/Start", headers, body)
    output = bytearray()
    decoder = EnvelopeDecoder()
    try:
        if resp.status != 200:
            raise SandboxError(f"the sandbox agent answered {resp.status}")
        async for piece in resp.aiter():
            for env in decoder.feed(piece):
                msg = env.json()
                if env.end_stream:
                    if msg.get("error"):
                        raise SandboxError(f"the sandbox agent failed: {msg['error']}")
                    continue
                event = msg.get("event") or {}
                if "start" in event and not wait:
                    return None, ""
                data = event.get("data") or {}
                for stream in ("stdout", "stderr"):
                    if stream in data:
                        output += b64decode(data[stream])
                        del output[:-2048]
                if "end" in event:
                    # proto3 JSON leaves a zero out: no exitCode is exit code 0
                    return int(event["end"].get("exitCode", 0)), output.decode(errors="replace")
    finally:
        resp.close()
    raise SandboxError(f"the command {command!r} ended without an exit status")


async def start(link: Any, start_cmd: str, ready_cmd: Optional[str], user: str,
                cwd: Optional[str], token: Optional[str],
                timeout: float = READY_TIMEOUT) -> None:
    """Start ``start_cmd``; then wait until ``ready_cmd`` succeeds (SandboxError if it does
    not within ``timeout`` seconds, naming its last output)."""
    await _run(link, start_cmd, user, cwd, token, wait=False)
    if not ready_cmd:
        return
    deadline = time.monotonic() + timeout
    while True:
        code, output = await _run(link, ready_cmd, user, cwd, token, wait=True)
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise SandboxError(f"the template's ready command {ready_cmd!r} did not succeed "
                               f"within {timeout:.0f} s (last exit code {code}): "
                               f"{output.strip()[-500:]}")
        await asyncio.sleep(READY_INTERVAL)
