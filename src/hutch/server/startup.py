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


def _request(cmd: str, args: list[str], user: str, cwd: Optional[str],
             token: Optional[str]) -> tuple[list, bytes]:
    process: dict[str, Any] = {"cmd": cmd, "args": args}
    if cwd:
        process["cwd"] = cwd
    body = encode_envelope({"process": process})
    headers = [(b"host", b"agent"), (b"content-type", b"application/connect+json"),
               (b"authorization", b"Basic " + b64encode(f"{user}:".encode()).encode()),
               (b"content-length", str(len(body)).encode())]
    if token:
        headers.append((b"x-access-token", token.encode()))
    return headers, body


async def run(link: Any, cmd: str, args: list[str], *, user: str, cwd: Optional[str] = None,
              token: Optional[str] = None, wait: bool = True,
              keep: int = 1 << 20) -> tuple[Optional[int], bytes, bytes]:
    """Start ``cmd args`` through the agent's process service (the Connect stream the SDK's
    ``commands.run`` opens). With ``wait``: its exit code, stdout and stderr (the last
    ``keep`` bytes of each); without: (None, b"", b"") once it has started (it keeps
    running after the stream is let go)."""
    headers, body = _request(cmd, args, user, cwd, token)
    resp = await link.request("POST", b"/process.Process/Start", headers, body)
    out = {"stdout": bytearray(), "stderr": bytearray()}
    decoder = EnvelopeDecoder()
    ended = None
    try:
        if resp.status != 200:
            raise SandboxError(f"the sandbox agent answered {resp.status}: "
                               f"{(await resp.read())[:200]!r}")
        async for piece in resp.aiter():
            for env in decoder.feed(piece):
                msg = env.json()
                if env.end_stream:
                    if msg.get("error"):
                        raise SandboxError(f"the sandbox agent failed: {msg['error']}")
                    continue
                event = msg.get("event") or {}
                if "start" in event and not wait:
                    return None, b"", b""
                data = event.get("data") or {}
                for stream, kept in out.items():
                    if stream in data:
                        kept += b64decode(data[stream])
                        del kept[:-keep]
                if "end" in event:
                    # proto3 JSON leaves a zero out: no exitCode is exit code 0
                    ended = (int(event["end"].get("exitCode", 0)), bytes(out["stdout"]),
                             bytes(out["stderr"]))
        # Read to the stream's end (it follows the end event at once): an exchange read to
        # its end leaves the connection to the agent open for the next request, which a
        # sandbox handed out of the warm pool would otherwise open afresh.
        if ended is not None:
            return ended
    finally:
        resp.close()
    raise SandboxError(f"{cmd} ended without an exit status")


def _shell(command: str) -> tuple[str, list[str]]:
    return "/bin/bash", ["-l", "-c", command]


async def start(link: Any, start_cmd: str, ready_cmd: Optional[str], user: str,
                cwd: Optional[str], token: Optional[str],
                timeout: float = READY_TIMEOUT) -> None:
    """Start ``start_cmd``; then wait until ``ready_cmd`` succeeds (SandboxError if it does
    not within ``timeout`` seconds, naming its last output)."""
    await run(link, *_shell(start_cmd), user=user, cwd=cwd, token=token, wait=False)
    if not ready_cmd:
        return
    deadline = time.monotonic() + timeout
    while True:
        code, stdout, stderr = await run(link, *_shell(ready_cmd), user=user, cwd=cwd,
                                         token=token, keep=2048)
        output = (stdout + stderr).decode(errors="replace")
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise SandboxError(f"the template's ready command {ready_cmd!r} did not succeed "
                               f"within {timeout:.0f} s (last exit code {code}): "
                               f"{output.strip()[-500:]}")
        await asyncio.sleep(READY_INTERVAL)
