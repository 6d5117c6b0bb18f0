"""The audit trail: what was done to and inside each sandbox, as the server saw it.

Every event is one JSON object in the store's ``audit_log`` (written in batches, see
:mod:`hutch.server.store`) with ``time``, ``kind`` and ``sandbox_id`` (or, for a control-plane
call about no sandbox, only ``key_id``). Kinds:

- ``api``: a control-plane call (method, route template, status, the calling key, duration).
- ``lifecycle``: a sandbox created, killed (by whom), expired, its timeout or network changed,
  adopted by a restarted server, failed, stopped by itself; ``oom`` when the runtime counts
  new out-of-memory kills in it after one of its processes ended by a signal.
- ``process`` and ``pty``: a process started through the data plane (``phase: start`` when
  the agent reports its pid, ``phase: end`` with its exit, output sizes and first bytes).
- ``file``: a file read or written through the agent's ``/files``.
- ``dns``, ``connection``, ``closed``: the egress decisions (the former egress log).

Everything here is observed by the server on the bytes it relays anyway: the request envelope
of ``process.Process/Start`` is parsed once, and the response stream's envelopes are followed
by their 5-byte headers as they pass, with only a bounded prefix of each kept (the sandbox
could otherwise make the server buffer a huge envelope). Nothing is asked of the sandbox, which
must not be trusted to report on itself.

Secrets: only env var *names* are recorded. The values of the sandbox's env vars and of the
call's own ``envs`` are also cut out of what is recorded (argv, the output's first bytes), so a
command that prints its secret does not copy it into the store; values shorter than
``MIN_SECRET`` characters are not searched for (they would blank out ordinary words).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from typing import Any, Iterable
from urllib.parse import parse_qs

from hutch.protocol.envelope import FLAG_END_STREAM, HEADER_SIZE
from hutch.protocol.protojson import field

log = logging.getLogger("hutch.server.audit")

KINDS = ("api", "lifecycle", "process", "pty", "file", "dns", "connection", "closed")
HEAD = 4096               # bytes of stdout/stderr kept per process
MIN_SECRET = 4
REDACTED = "[redacted]"
_MAX_REQUEST = 1 << 20    # a Start request bigger than this is recorded without its details
_KEEP = 8192              # bytes kept of one response envelope (enough for a 4 KiB head)
_TAIL = 6                 # and of its end: base64 padding tells the exact size
_DATA = {kind: b'{"event":{"data":{"%s":"' % kind.encode() for kind in ("stdout", "stderr",
                                                                            "pty")}
DEFAULT_USER = "user"


def basic_user(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The Linux user an agent request names (``Authorization: Basic base64("user:")``)."""
    for name, value in headers:
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                return base64.b64decode(value[6:].strip()).decode().split(":", 1)[0] or None
            except (ValueError, UnicodeDecodeError):
                return None
    return None


class Redactor:
    """Cuts known secret values out of text and bytes before they are recorded."""

    def __init__(self, values: Iterable[str]) -> None:
        found = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET}
        self._text = sorted(found, key=len, reverse=True)
        self._bytes = [v.encode() for v in self._text]

    def text(self, value: str) -> str:
        for secret in self._text:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value: bytes) -> str:
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        return value.decode("utf-8", "replace")


def api_event(method: str, template: str, status: int, key_id: str, duration: float,
              sandbox_id: str | None) -> dict:
    event = {"time": time.time(), "kind": "api", "key_id": key_id, "method": method,
             "path": template, "status": status, "duration_ms": round(duration * 1e3, 2)}
    if sandbox_id is not None:
        event["sandbox_id"] = sandbox_id
    return event


def lifecycle(store: Any, sandbox_id: str, event: str, reason: str | None = None,
              by: str | None = None, **fields: Any) -> None:
    """Record a lifecycle change of a sandbox; ``by`` is the key that asked for it."""
    out = {"time": time.time(), "kind": "lifecycle", "sandbox_id": sandbox_id, "event": event}
    if reason is not None:
        out["reason"] = reason
    if by is not None:
        out["by"] = by
    out.update(fields)
    store.record(out)


RETENTION_CHECK_SECONDS = 3600.0


async def retain(store: Any, max_age: float,
                 every: float = RETENTION_CHECK_SECONDS) -> None:
    """Run forever: delete audit events older than ``max_age`` seconds, at start and then
    every ``every`` seconds (so an event outlives its retention by at most that)."""
    while True:
        try:
            gone = store.prune_audit(max_age)
            if gone:
                log.info("audit retention: %d event(s) older than %.0f days deleted", gone,
                         max_age / 86400)
        except Exception:   # noqa: BLE001 - try again at the next round
            log.exception("audit retention failed")
        await asyncio.sleep(every)


class ApiRecorder:
    """ASGI middleware of the control plane: one ``api`` event per authenticated call.

    Calls without a valid key are not recorded (they belong to no tenant, and anyone could
    fill the trail with them). The route template (``/sandboxes/{id}``) is recorded, never the
    query or the body. A call is filed under its sandbox only when the caller owns it (the
    endpoint says so through the scope), so probing another tenant's ids leaves nothing in
    that tenant's trail."""

    SANDBOX = "hutch.audit.sandbox"

    def __init__(self, app, store: Any, key_of) -> None:
        self.app, self.store, self._key_of = app, store, key_of

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def watching(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            key = self._key_of(scope)
            if key is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or "(no route)"
                self.store.record(api_event(scope["method"], template, status[0], key.id,
                                            time.perf_counter() - t0, scope.get(self.SANDBOX)))


class _Head:
    """The first HEAD bytes of one output stream and its total size."""

    __slots__ = ("size", "head")

    def __init__(self) -> None:
        self.size = 0
        self.head = bytearray()


class ProcessTap:
    """Follows one ``process.Process/Start`` exchange through the proxy and records it.

    :meth:`request` sees the request body's bytes, :meth:`response` the response body's, both
    as they pass; :meth:`close` records the end, whatever way the exchange ended."""

    def __init__(self, store: Any, sandbox_id: str, user: str | None,
                 secrets: Iterable[str]) -> None:
        self.store, self.sandbox_id = store, sandbox_id
        self.user = user or DEFAULT_USER
        self._secrets = list(secrets)
        self._redact = Redactor(self._secrets)
        self._req = bytearray()
        self._req_done = False
        self.info: dict[str, Any] = {}
        self.kind = "process"
        self.pid: int | None = None
        self.end: dict | None = None
        self.error: str | None = None
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._out = {"stdout": _Head(), "stderr": _Head(), "pty": _Head()}
        # Response envelope parsing state.
        self._hdr = bytearray()
        self._left = 0          # payload bytes of the current envelope still to come
        self._flags = 0
        self._size = 0
        self._keep = bytearray()
        self._tail = b""
        self._broken = False
        self.status: int | None = None

    # -- the request -------------------------------------------------------------------------

    def request(self, chunk: bytes) -> None:
        if self._req_done:
            return
        self._req += chunk
        if len(self._req) > _MAX_REQUEST:
            self._req_done = True
            self.info = {"unparsed": "request too large"}
            self._req = bytearray()
            return
        if len(self._req) < HEADER_SIZE:
            return
        size = int.from_bytes(self._req[1:5], "big")
        if len(self._req) < HEADER_SIZE + size:
            return
        self._req_done = True
        payload = bytes(self._req[HEADER_SIZE:HEADER_SIZE + size])
        self._req = bytearray()
        try:
            msg = json.loads(payload) if payload else {}
            config = field(msg, "process") or {}
            envs = field(config, "envs") or {}
            argv = [str(field(config, "cmd") or "")] + [str(a) for a in
                                                        field(config, "args", []) or []]
            # The call's own env values are secrets too: learnt here, never recorded.
            self._secrets += [str(v) for v in envs.values()]
            self._redact = Redactor(self._secrets)
            self.info = {"argv": [self._redact.text(a) for a in argv],
                         "cwd": field(config, "cwd"), "user": self.user,
                         "env": sorted(str(k) for k in envs)}
            if field(msg, "tag") is not None:
                self.info["tag"] = str(field(msg, "tag"))
            if field(msg, "pty") is not None:
                self.kind = "pty"
        except (ValueError, TypeError, AttributeError):
            self.info = {"unparsed": "not a JSON Start request"}

    # -- the response ------------------------------------------------------------------------

    def response(self, chunk: bytes) -> None:
        if self._broken or self.status != 200:
            return    # an error answer is one JSON body, not envelopes
        view = memoryview(chunk)
        pos, n = 0, len(chunk)
        while pos < n:
            if self._left == 0 and len(self._hdr) < HEADER_SIZE:
                take = min(HEADER_SIZE - len(self._hdr), n - pos)
                self._hdr += view[pos:pos + take]
                pos += take
                if len(self._hdr) < HEADER_SIZE:
                    break
                self._flags = self._hdr[0]
                self._size = self._left = int.from_bytes(self._hdr[1:5], "big")
                self._keep = bytearray()
                self._tail = b""
                if self._left == 0:
                    self._envelope()
                continue
            take = min(self._left, n - pos)
            room = _KEEP - len(self._keep)
            if room > 0:
                self._keep += view[pos:pos + min(room, take)]
            if take >= _TAIL:
                self._tail = bytes(view[pos + take - _TAIL:pos + take])
            else:
                self._tail = (self._tail + bytes(view[pos:pos + take]))[-_TAIL:]
            self._left -= take
            pos += take
            if self._left == 0:
                self._envelope()

    def _envelope(self) -> None:
        self._hdr = bytearray()
        payload, size = bytes(self._keep), self._size
        try:
            if not self._flags & FLAG_END_STREAM:
                for name, prefix in _DATA.items():
                    if payload.startswith(prefix):
                        return self._data(name, payload[len(prefix):], size - len(prefix) - 4)
            if len(payload) < size:
                return    # a large envelope that is not output: nothing to learn from it
            msg = json.loads(payload) if payload else {}
            if self._flags & FLAG_END_STREAM:
                err = msg.get("error") if isinstance(msg, dict) else None
                if err:
                    self.error = str(err.get("message") or err.get("code"))[:500]
                return
            event = msg.get("event") or {}
            if "start" in event:
                self.pid = int((event["start"] or {}).get("pid") or 0)
                self._record_start()
            elif "data" in event:
                for name, value in (event["data"] or {}).items():
                    if name in self._out and isinstance(value, str):
                        raw = base64.b64decode(value)
                        self._add(name, len(raw), raw)
            elif "end" in event:
                self.end = event["end"] or {}
        except (ValueError, TypeError, AttributeError, binascii.Error):
            pass   # not what the agent sends: the stream is relayed all the same

    def _data(self, name: str, b64_head: bytes, b64_size: int) -> None:
        tail = self._tail if len(self._keep) < self._size else b64_head[-_TAIL:]
        padding = tail[:-4].count(b"=") if tail.endswith(b'"}}}') else 0
        total = max(0, b64_size * 3 // 4 - padding)
        out = self._out[name]
        want = HEAD - len(out.head)
        head = b""
        if want > 0:
            usable = b64_head[:((want + 2) // 3) * 4]
            end = usable.find(b'"')
            if end >= 0:
                usable = usable[:end]
            usable = usable[:len(usable) // 4 * 4]
            try:
                head = base64.b64decode(usable)
            except binascii.Error:
                head = b""
        self._add(name, total, head)

    def _add(self, name: str, size: int, head: bytes) -> None:
        out = self._out[name]
        out.size += size
        want = HEAD - len(out.head)
        if want > 0:
            out.head += head[:want]

    @property
    def signalled(self) -> bool:
        """The process ended by a signal (which the OOM killer may have sent)."""
        return self.end is not None and not self.end.get("exited", False)

    # -- records ---------------------------------------------------------------------------

    def _base(self) -> dict:
        return {"kind": self.kind, "sandbox_id": self.sandbox_id, **self.info}

    def _record_start(self) -> None:
        self.store.record({**self._base(), "time": time.time(), "phase": "start",
                           "pid": self.pid})

    def close(self, *, detached: bool = False) -> None:
        """The exchange is over (``detached``: the client or the server cut it short)."""
        event = {**self._base(), "time": time.time(), "phase": "end", "pid": self.pid,
                 "duration_ms": round((time.monotonic() - self._t0) * 1e3, 2)}
        if self.end is not None:
            if self.end.get("exited", False):
                event["exit_code"] = int(self.end.get("exitCode") or 0)
            else:
                status = str(self.end.get("status") or "")
                event["signal"] = status.split(":", 1)[-1].strip() or "unknown"
            if self.end.get("error"):
                event["error"] = self._redact.text(str(self.end["error"]))[:500]
        elif self.pid is not None:
            # The stream was cut (client gone, sandbox killed, server stopping): the process
            # may run on, unobserved.
            event["detached"] = True
        else:
            event["started"] = False
            if detached:
                event["error"] = "the request ended before the process started"
        if self.error is not None:
            event["error"] = self._redact.text(self.error)
        if self.status is not None and self.status != 200:
            event["http_status"] = self.status
        for name in ("stdout", "stderr", "pty"):
            out = self._out[name]
            if name == "pty" and self.kind != "pty":
                continue
            event[f"{name}_bytes"] = out.size
            event[f"{name}_head"] = self._redact.data(bytes(out.head))
        self.store.record(event)


class FileTap:
    """Follows one ``/files`` exchange: the path, the user, the bytes that passed."""

    def __init__(self, store: Any, sandbox_id: str, method: str, query: bytes,
                 headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.store, self.sandbox_id = store, sandbox_id
        self.write = method == "POST"
        args = parse_qs(query.decode("latin-1"))
        self.path = (args.get("path") or [None])[0]
        self.user = (args.get("username") or [None])[0] or basic_user(headers) or DEFAULT_USER
        self.sent = 0           # request body bytes (an upload)
        self.received = 0       # response body bytes (a download)
        self._answer = bytearray()
        self.status: int | None = None
        self.signed = b"signature=" in query

    def request(self, chunk: bytes) -> None:
        self.sent += len(chunk)

    def response(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.write and len(self._answer) < 65536:
            self._answer += chunk[:65536 - len(self._answer)]

    def close(self, *, detached: bool = False) -> None:
        event = {"time": time.time(), "kind": "file", "sandbox_id": self.sandbox_id,
                 "op": "write" if self.write else "read", "user": self.user,
                 "status": self.status, "size": self.sent if self.write else self.received}
        paths = [self.path] if self.path else []
        if self.write and self.status == 200:
            try:
                written = [e.get("path") for e in json.loads(self._answer)
                           if isinstance(e, dict)]
                paths = [p for p in written if isinstance(p, str)] or paths
            except (ValueError, TypeError, AttributeError):
                pass
        event["path"] = paths[0] if len(paths) == 1 else None
        if len(paths) > 1:
            event["paths"] = paths
        if self.signed:
            event["signed"] = True
        if detached:
            event["detached"] = True
        self.store.record(event)
