"""The interpreter's side of the Jupyter messaging protocol: one kernel's shell and IOPub.

Messages are signed and framed as the protocol says (``<IDS|MSG>``, an HMAC-SHA256 of the
header, parent header, metadata and content, then those four as JSON); IOPub messages are
checked against their signature and parsed, without the metadata (unused here) or date
parsing (which was most of jupyter_client's cost per message). Only what the interpreter uses
is here: execute requests and kernel_info on the shell channel, IOPub, and the wait for a
starting kernel; interrupts are signals and stopping is killing the process group
(:mod:`.kernel`), so neither the control nor the stdin nor the heartbeat channel is opened.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

from . import zmtp

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
#: How often a starting kernel's sockets are looked for, and its kernel_info asked again.
CONNECT_POLL = 0.005
INFO_RETRY = 0.05


class Empty(Exception):
    """No message came within the time asked for."""


class KernelClient:
    """Talks to one kernel through the connection info the interpreter wrote for it (ipc
    transport: channel ``name``'s socket is ``<ip>-<port>``)."""

    def __init__(self, info: Dict[str, Any]) -> None:
        self.info = info
        self._hmac = hmac.new(info["key"].encode(), digestmod=hashlib.sha256)
        self.session = os.urandom(16).hex()
        self.shell: Optional[zmtp.Peer] = None
        self.iopub: Optional[zmtp.Peer] = None

    def _path(self, channel: str) -> str:
        return f"{self.info['ip']}-{self.info[channel + '_port']}"

    # -- start ----------------------------------------------------------------------------

    async def connect(self, alive: Callable[[], bool], timeout: float) -> None:
        """Connect once the kernel listens, and return once it answers on the shell channel
        and its IOPub reaches us (a subscription takes effect asynchronously: what the kernel
        published before it did is lost, so IOPub must be seen working before any cell)."""
        deadline = time.monotonic() + timeout
        self.iopub = await self._connect("iopub", "SUB", alive, deadline)
        self.iopub.send([b"\x01"])                  # subscribe to every topic
        self.shell = await self._connect("shell", "DEALER", alive, deadline)
        while True:
            asked = self.request("kernel_info_request", {})
            if await self._reply_to(asked, alive, deadline):
                try:
                    await self.get_iopub_msg(INFO_RETRY)   # welcome, or our request's status
                    return
                except Empty:
                    pass
            _check(alive, deadline)

    async def _connect(self, channel: str, kind: str, alive, deadline: float) -> zmtp.Peer:
        path = self._path(channel)
        while True:
            # A stat until the socket exists: attempting connections instead was a tenth of
            # the interpreter's CPU time while the kernel starts, taken from the kernel (the
            # sandbox's processes share its CPU quota).
            if os.path.exists(path):
                try:
                    return await asyncio.wait_for(zmtp.connect(path, kind),
                                                  max(0.0, deadline - time.monotonic()))
                except (FileNotFoundError, ConnectionRefusedError):
                    pass                            # bound, not listening yet
                except asyncio.TimeoutError:
                    pass                            # _check says so
            _check(alive, deadline)
            await asyncio.sleep(CONNECT_POLL)

    async def _reply_to(self, msg_id: str, alive, deadline: float) -> bool:
        while True:
            try:
                reply = await self.get_shell_msg(min(1.0, max(0.0, deadline - time.monotonic())))
            except Empty:
                _check(alive, deadline)
                return False
            if reply["parent_header"].get("msg_id") == msg_id:
                return True

    # -- messages -------------------------------------------------------------------------

    def request(self, msg_type: str, content: Dict[str, Any]) -> str:
        """Send a shell request; return its msg_id."""
        msg_id = os.urandom(16).hex()
        header = json.dumps({
            "msg_id": msg_id, "msg_type": msg_type, "session": self.session,
            "username": "root", "version": PROTOCOL_VERSION,
            "date": datetime.now(timezone.utc).isoformat(),
        }).encode()
        parts = [header, b"{}", b"{}", json.dumps(content).encode()]
        self.shell.send([DELIMITER, self._sign(parts), *parts])
        return msg_id

    def execute(self, code: str, silent: bool = False, store_history: bool = True,
                allow_stdin: bool = False, stop_on_error: bool = True) -> str:
        return self.request("execute_request", {
            "code": code, "silent": silent, "store_history": store_history,
            "user_expressions": {}, "allow_stdin": allow_stdin, "stop_on_error": stop_on_error})

    async def get_iopub_msg(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        return await self._get(self.iopub, timeout)

    async def get_shell_msg(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        return await self._get(self.shell, timeout)

    async def _get(self, peer: zmtp.Peer, timeout: Optional[float]) -> Dict[str, Any]:
        while True:
            try:
                frames = await peer.recv(timeout)
            except asyncio.TimeoutError:
                raise Empty() from None
            except ConnectionError:
                # The kernel went away (callers learn it from :meth:`connected` and the
                # process): wait as asked, briefly, so a caller that polls does not spin.
                await asyncio.sleep(min(timeout if timeout is not None else 0.05, 0.05))
                raise Empty() from None
            msg = self._parse(frames)
            if msg is not None:
                return msg

    def connected(self) -> bool:
        return all(p is not None and not p.closed for p in (self.shell, self.iopub))

    def _parse(self, frames: List[bytes]) -> Optional[Dict[str, Any]]:
        """A message as a dict (``header``, ``parent_header``, ``content``, ``msg_type``), or
        None for frames that are not a validly signed message (skipped, as jupyter_client
        skips them)."""
        try:
            i = frames.index(DELIMITER)
        except ValueError:
            return None                     # the XPUB's subscription echo, say
        if len(frames) < i + 6:
            return None
        signature, parts = frames[i + 1], frames[i + 2:i + 6]
        if not hmac.compare_digest(signature, self._sign(parts)):
            return None
        try:
            header = _load(parts[0])
            return {"header": header, "msg_type": header.get("msg_type"),
                    "parent_header": _load(parts[1]), "content": _load(parts[3])}
        except (ValueError, AttributeError):
            return None

    def _sign(self, parts: List[bytes]) -> bytes:
        mac = self._hmac.copy()     # a copy of one keyed HMAC: cheaper than keying anew
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def close(self) -> None:
        for peer in (self.shell, self.iopub):
            if peer is not None:
                peer.close()


def _load(part: bytes) -> Any:
    # A kernel encodes text it could not encode as UTF-8 byte for byte (Jupyter's
    # surrogateescape): such bytes are read as U+FFFD rather than the message being lost.
    return json.loads(part.decode("utf-8", "replace"))


def _check(alive: Callable[[], bool], deadline: float) -> None:
    if not alive():
        raise RuntimeError("the kernel exited before it answered")
    if time.monotonic() > deadline:
        raise RuntimeError("the kernel did not answer in time")


