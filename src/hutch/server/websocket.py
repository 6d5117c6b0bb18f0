"""WebSockets through the data plane: a sandbox's TCP port, message for message.

A WebSocket handshake routed to a sandbox port (the same ``E2b-Sandbox-Id``/``E2b-Sandbox-Port``
headers or ``<port>-<id>.<domain>`` Host as plain requests) opens its own TCP connection to that
port at the sandbox's bridge address, repeats the handshake there (path, query, subprotocols
and the client's other end-to-end headers), and only accepts the client once the sandbox's
server has accepted: the client then sees the subprotocol and cookies the server chose, and a
server that refuses (or a port nobody listens on) is answered as a plain HTTP refusal rather
than an accepted socket that closes at once.

After that every message is relayed as it arrives, in both directions, and a close on either
side is passed on with its code and reason. ASGI only carries whole messages, so each hop
frames (and compresses) on its own; pings are answered per hop. Close codes that must never
appear on the wire are translated: a sandbox server that closes without a code closes the
client with 1000, one that drops its connection without a close frame closes the client with
1014 (bad gateway); a client that vanishes is mirrored by dropping the upstream connection.

The upstream side uses the ``websockets`` library's sans-I/O client protocol over a plain
asyncio stream, so the handshake request can carry the client's own Host header and nothing
is buffered beyond one message.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from contextlib import suppress

from websockets.client import ClientProtocol
from websockets.frames import CloseCode, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from hutch.server.manager import SandboxManager
from hutch.server.upstream import UpstreamError
from hutch.server.proxy import (
    AGENT_PORT, CODE_INTERPRETER_PORT, forwarded_headers, not_found, private_port_refusal,
)

log = logging.getLogger("hutch.server.websocket")

# The same ceiling the server puts on a client's messages (uvicorn's ws_max_size default).
MAX_MESSAGE = 16 * 1024 * 1024
HANDSHAKE_TIMEOUT = 30.0   # connect + upstream handshake
CLOSE_TIMEOUT = 10.0       # how long the sandbox's server gets to answer a close
_READ = 64 * 1024
# Headers of the handshake that belong to one hop (each hop negotiates its own).
_PER_HOP = {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
            b"sec-websocket-protocol", b"sec-websocket-accept", b"content-length",
            b"date", b"server", b"connection", b"upgrade", b"transfer-encoding", b"keep-alive"}
# Codes a close frame may carry: anything else received is translated before passing on.
_SENDABLE = {int(c) for c in (
    CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.PROTOCOL_ERROR,
    CloseCode.UNSUPPORTED_DATA, CloseCode.INVALID_DATA, CloseCode.POLICY_VIOLATION,
    CloseCode.MESSAGE_TOO_BIG, CloseCode.MANDATORY_EXTENSION, CloseCode.INTERNAL_ERROR,
    CloseCode.SERVICE_RESTART, CloseCode.TRY_AGAIN_LATER, CloseCode.BAD_GATEWAY)}


class Refused(Exception):
    """The handshake cannot go through: answered to the client as an HTTP response."""

    def __init__(self, status: int, body: bytes, headers: list | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or []


def sendable(code: int | None) -> bool:
    return code is not None and (code in _SENDABLE or 3000 <= code < 5000)


def client_close(code: int | None, reason: str, dropped: bool) -> tuple[int, str]:
    """The close to send the client for how the sandbox's server ended the connection."""
    if dropped:
        return int(CloseCode.BAD_GATEWAY), "the sandbox closed the connection abruptly"
    if sendable(code):
        return code, reason  # type: ignore[return-value]
    return int(CloseCode.NORMAL_CLOSURE), reason if code == 1000 else ""


def _json(status: int, body: dict) -> Refused:
    return Refused(status, json.dumps(body).encode(),
                   [(b"content-type", b"application/json")])


class WebSocketPlane:
    """The ASGI handler for ``websocket`` scopes the data plane routes to a sandbox."""

    def __init__(self, manager: SandboxManager, max_message: int = MAX_MESSAGE) -> None:
        self.manager = manager
        self.max_message = max_message

    async def __call__(self, scope: dict, receive, send, sandbox_id: str,
                       port: int | None) -> None:
        self.manager.busy()
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            live, proto, reader, writer, response = await asyncio.wait_for(
                self._open(scope, sandbox_id, port), HANDSHAKE_TIMEOUT)
        except asyncio.TimeoutError:
            return await self._refuse(scope, send, _json(504, {
                "sandboxId": sandbox_id, "code": 504, "port": port,
                "message": "the sandbox's server did not complete the WebSocket handshake "
                           "in time"}))
        except Refused as refusal:
            return await self._refuse(scope, send, refusal)
        # Killing the sandbox cancels its streams: this one then ends with 1001.
        task = asyncio.current_task()
        live.streams.add(task)
        try:
            await send({"type": "websocket.accept", "subprotocol": proto.subprotocol,
                        "headers": [(n.lower().encode(), v.encode("latin-1"))
                                    for n, v in response.headers.raw_items()
                                    if n.lower().encode() not in _PER_HOP]})
            await _Relay(proto, reader, writer, receive, send).run()
        except asyncio.CancelledError:
            if self.manager.lookup(sandbox_id) is not None:
                raise   # the server is stopping (uvicorn closes the client with 1012)
            with suppress(Exception):
                await send({"type": "websocket.close", "code": int(CloseCode.GOING_AWAY),
                            "reason": "the sandbox is gone"})
        finally:
            live.streams.discard(task)
            writer.close()

    async def _open(self, scope: dict, sandbox_id: str, port: int | None):
        live = self.manager.lookup(sandbox_id)
        if live is None:
            raise _json(502, not_found(sandbox_id))
        if port is None:
            raise _json(400, {"code": 400, "sandboxId": sandbox_id,
                              "message": "invalid sandbox port"})
        if port == AGENT_PORT:
            raise _json(404, {"code": 404, "sandboxId": sandbox_id,
                              "message": "the sandbox agent has no WebSocket endpoints"})
        if port == CODE_INTERPRETER_PORT and live.interpreter:
            raise _json(404, {"code": 404, "sandboxId": sandbox_id,
                              "message": "the code interpreter has no WebSocket endpoints"})
        refusal = private_port_refusal(live, port, scope["headers"])
        if refusal is not None:
            raise _json(401, refusal)
        link = live.port(port)
        if link is None:
            raise _json(502, {
                "sandboxId": sandbox_id, "code": 502, "port": port,
                "message": "The sandbox is running but port is not open"})
        try:
            reader, writer = await link.open_connection()
        except (OSError, UpstreamError) as exc:
            raise _json(502, {"sandboxId": sandbox_id, "code": 502, "port": port,
                              "message": f"The sandbox is running but port is not open: "
                                         f"{exc}"}) from None
        try:
            return (live, *await self._handshake(scope, port, reader, writer))
        except BaseException:
            writer.close()
            raise

    async def _handshake(self, scope: dict, port: int, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter):
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        if not target.isascii() or not target.isprintable() or " " in target:
            raise _json(400, {"code": 400, "message": "invalid request target"})
        proto = ClientProtocol(parse_uri("ws://sandbox/"),
                               subprotocols=scope.get("subprotocols") or None,
                               max_size=self.max_message)
        request = proto.connect()
        request.path = target   # as the client sent it, escapes and all
        del request.headers["Host"]
        headers, _, _ = forwarded_headers(scope["headers"], port)
        for name, value in headers:
            if name not in _PER_HOP:
                request.headers[name.decode("latin-1")] = value.decode("latin-1")
        if "Host" not in request.headers:
            request.headers["Host"] = f"{writer.get_extra_info('peername')[0]}:{port}"
        proto.send_request(request)
        _flush(proto, writer)
        while True:
            data = await reader.read(_READ)
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            for event in proto.events_received():
                if isinstance(event, Response):
                    if proto.handshake_exc is None:
                        return proto, reader, writer, event
                    raise self._refusal(event)
            if proto.handshake_exc is not None or not data:
                raise _json(502, {"code": 502, "port": port, "message":
                                  f"the sandbox's server did not accept the WebSocket: "
                                  f"{proto.handshake_exc or 'connection closed'}"})

    @staticmethod
    def _refusal(response: Response) -> Refused:
        """The sandbox server's own refusal (a 404, a 401...), passed on as it came."""
        status = response.status_code
        if status == 101 or status not in http.HTTPStatus._value2member_map_:
            # A 101 that fails the handshake checks (bad accept key, unasked subprotocol).
            return _json(502, {"code": 502, "message": "the sandbox's server answered the "
                                                       "WebSocket handshake wrongly"})
        headers = [(n.lower().encode(), v.encode("latin-1"))
                   for n, v in response.headers.raw_items() if n.lower().encode() not in _PER_HOP]
        return Refused(status, bytes(response.body), headers)

    @staticmethod
    async def _refuse(scope: dict, send, refusal: Refused) -> None:
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": refusal.status,
                        "headers": refusal.headers})
            await send({"type": "websocket.http.response.body", "body": refusal.body})
        else:
            await send({"type": "websocket.close", "code": 1008})   # a bare 403


def _flush(proto: ClientProtocol, writer: asyncio.StreamWriter) -> None:
    for data in proto.data_to_send():
        if data:
            writer.write(data)
        elif writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()


class _Relay:
    """Both directions of one accepted connection, until either side closes."""

    def __init__(self, proto: ClientProtocol, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, receive, send) -> None:
        self.proto, self.reader, self.writer = proto, reader, writer
        self.receive, self.send = receive, send

    async def run(self) -> None:
        upstream = asyncio.create_task(self._from_upstream())
        client = asyncio.create_task(self._from_client())
        try:
            done, _ = await asyncio.wait({upstream, client},
                                         return_when=asyncio.FIRST_COMPLETED)
            if upstream in done:
                client.cancel()
                code, reason, dropped = self._upstream_end(upstream)
                code, reason = client_close(code, reason, dropped)
                await self.send({"type": "websocket.close", "code": code, "reason": reason})
                return
            code, reason = client.result()
            if code == CloseCode.ABNORMAL_CLOSURE:
                return   # the client vanished: so does the upstream connection
            if self.proto.close_sent is None and self.proto.close_rcvd is None:
                if sendable(code):
                    self.proto.send_close(code, reason)
                else:
                    self.proto.send_close()
                _flush(self.proto, self.writer)
            # Give the sandbox's server its say (its close reply) before hanging up.
            await asyncio.wait({upstream}, timeout=CLOSE_TIMEOUT)
        finally:
            for task in (upstream, client):
                task.cancel()
            await asyncio.gather(upstream, client, return_exceptions=True)

    def _upstream_end(self, task: asyncio.Task) -> tuple[int | None, str, bool]:
        if task.exception() is not None:
            log.debug("sandbox websocket failed: %r", task.exception())
            return None, "", True
        close = self.proto.close_rcvd
        if close is None:
            sent = self.proto.close_sent
            if self.proto.parser_exc is not None and sent is not None:
                # It broke the protocol or sent too big a message: the client learns why.
                return sent.code, sent.reason, False
            return None, "", True
        return close.code, close.reason, False

    async def _from_client(self) -> tuple[int, str]:
        while True:
            msg = await self.receive()
            kind = msg["type"]
            if kind == "websocket.receive":
                text = msg.get("text")
                if text is not None:
                    self.proto.send_text(text.encode())
                else:
                    self.proto.send_binary(msg.get("bytes") or b"")
                _flush(self.proto, self.writer)
                await self.writer.drain()
            elif kind == "websocket.disconnect":
                return msg.get("code", 1005), msg.get("reason") or ""

    async def _from_upstream(self) -> None:
        """Relay messages to the client; returns when the sandbox's server has closed."""
        proto, parts, text = self.proto, [], False
        while True:
            data = await self.reader.read(_READ)
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            _flush(proto, self.writer)   # pongs, the close reply
            for frame in proto.events_received():
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    text, parts = frame.opcode is Opcode.TEXT, [frame.data]
                elif frame.opcode is Opcode.CONT:
                    parts.append(frame.data)
                else:
                    continue
                if frame.fin:
                    payload = bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
                    parts = []
                    await self.send({"type": "websocket.send", "text": payload.decode()}
                                    if text else {"type": "websocket.send", "bytes": payload})
            if proto.close_rcvd is not None or not data or proto.parser_exc is not None:
                return
