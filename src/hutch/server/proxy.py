"""The data plane: requests for a sandbox go through to its agent, unbuffered both ways.

A request is for a sandbox when it carries ``E2b-Sandbox-Id`` and ``E2b-Sandbox-Port`` headers
(what the E2B SDKs send when ``E2B_SANDBOX_URL`` is set) or when its Host is
``<port>-<sandbox id>.<domain>`` (the SDKs' default URLs, with ``HUTCH_DOMAIN`` set).

Port 49983 is the agent (its unix socket; ``X-Access-Token`` checked when the sandbox has one),
49999 the code interpreter where the template has one. Any other port is that TCP port inside
the sandbox, reached over the bridge at the sandbox's address (or, without a network, through
the agent); private by default (the traffic token, see :func:`private_port_refusal`).

This is a raw ASGI handler rather than a Starlette endpoint because streaming is the whole job:
every request body chunk is forwarded as it arrives (``StreamInput`` sends one envelope per
chunk and waits for the effect), every response chunk is sent on as soon as it comes, and a
client that goes away closes the upstream connection at once so the agent stops that stream.
Upstream connections are pooled per sandbox (:class:`~hutch.server.upstream.AgentLink`).
Every request is counted for ``GET /metrics`` (:mod:`hutch.server.metrics`), and a process
start or a code run timed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from hutch.server import egress as egress_rules
from hutch.server.audit import FileTap, ProcessTap, basic_user
from hutch.server.keys import traffic_token
from hutch.server.manager import SandboxManager
from hutch.server.upstream import UpstreamError

log = logging.getLogger("hutch.server.proxy")

AGENT_PORT = 49983
CODE_INTERPRETER_PORT = 49999
# Hop-by-hop headers (RFC 9110 §7.6.1) are never forwarded; framing is re-done on each side.
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
        b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization"}
# What uvicorn logs when a handler ends a response early on purpose: the streams of a killed
# sandbox are cut without their end, which must look like a broken connection to the client.
ABORT_LOG_MESSAGE = "ASGI callable returned without completing response."


class ClientGone(Exception):
    """The client closed its connection while its request body was still streaming."""


def route(scope: dict, domain: str) -> tuple[str, int | None] | None:
    """The (sandbox id, port) a request is for, or None for the control plane."""
    sandbox_id = port = host = None
    for name, value in scope["headers"]:
        if name == b"e2b-sandbox-id":
            sandbox_id = value.decode("latin-1")
        elif name == b"e2b-sandbox-port":
            port = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
    if sandbox_id is not None:
        return sandbox_id, _port(port) if port is not None else AGENT_PORT
    if domain and host:
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        suffix = "." + domain
        if name.endswith(suffix):
            label = name[: -len(suffix)]
            head, sep, sid = label.partition("-")
            if sep and sid and "." not in sid:
                return sid, _port(head)
    return None


def _traffic_ok(headers: list[tuple[bytes, bytes]], access_token: str) -> bool:
    want = (traffic_token(access_token) or "").encode()
    return any(name == b"e2b-traffic-access-token" and hmac.compare_digest(value, want)
               for name, value in headers)


def private_port_refusal(live, port: int, headers: list[tuple[bytes, bytes]]) -> dict | None:
    """The 401 body for a request to a user's port of a sandbox created with
    ``allowPublicTraffic: false`` that lacks its traffic token, else None."""
    if port == AGENT_PORT or (port == CODE_INTERPRETER_PORT and live.interpreter):
        return None
    if egress_rules.public_of(live.record.egress):
        return None
    if live.record.access_token and _traffic_ok(headers, live.record.access_token):
        return None
    return {"code": 401, "sandboxId": live.record.id, "message": (
        "this sandbox's ports are private (allowPublicTraffic: false): send its "
        "trafficAccessToken as E2B-Traffic-Access-Token")}


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and int(text) < 65536 else None


def forwarded_headers(headers: list[tuple[bytes, bytes]], port: int,
                      ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool]:
    """The request headers to send upstream, the access token presented, and whether the
    body comes chunked (it is re-chunked upstream: framing is per hop)."""
    out: list[tuple[bytes, bytes]] = []
    token = None
    chunked = False
    to_agent = port == AGENT_PORT
    # The code interpreter is hutch's own in-sandbox service and may check the token; any
    # other port is a user's app, for which the agent's credential is none of its business.
    keep_token = to_agent or port == CODE_INTERPRETER_PORT
    for name, value in headers:
        if name == b"x-access-token":
            token = value
            if not keep_token:
                continue
        elif name == b"transfer-encoding":
            chunked = True
        elif to_agent and (name == b"x-api-key" or (
                name == b"authorization" and value[:6].lower() != b"basic ")):
            # hutch's own API credentials, sent along by a client that adds them to every
            # request: the agent never uses them, and whatever answers on the agent's socket
            # is under the sandbox's control (an API key reads the tenant's other sandboxes).
            continue
        if name not in _HOP and (to_agent or not name.startswith(b"e2b-")):
            out.append((name, value))
    return out, token, chunked


async def _json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        *(headers or []),
    ]})
    await send({"type": "http.response.body", "body": data})


def _service(port: int | None, interpreter: bool) -> str:
    """What a request is for, as metrics name it: envd (the agent), code_interpreter, or
    port (any other port, the sandbox's own)."""
    if port == AGENT_PORT:
        return "envd"
    if port == CODE_INTERPRETER_PORT and interpreter:
        return "code_interpreter"
    return "port"


def _timed_kind(method: str, path: str, service: str) -> str | None:
    """``exec`` for a process start, ``run_code`` for a code run; else None (not timed)."""
    if method == "POST" and service == "envd" and path == "/process.Process/Start":
        return "exec"
    if method == "POST" and service == "code_interpreter" and path == "/execute":
        return "run_code"
    return None


def not_found(sandbox_id: str) -> dict:
    # The SDK looks for "was not found" to tell a dead sandbox from an unreachable one.
    return {"sandboxId": sandbox_id, "message": "The sandbox was not found", "code": 502}


class DataPlane:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.metrics = manager.prometheus
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def drop_all(self) -> None:
        """Cut every open stream: the server is stopping (the sandboxes keep running, and
        clients re-attach to the next server). Audit follow streams end too."""
        self._stopping = True
        self.manager.store.stop_followers()
        for task in list(self._tasks):
            task.cancel()

    async def __call__(self, scope: dict, receive, send, sandbox_id: str,
                       port: int | None) -> None:
        """Relay one request, counted by service and status; a process start and a code run
        are also timed, from here to the end of their streamed answer."""
        self.manager.busy()
        live = self.manager.lookup(sandbox_id)
        service = _service(port, live is not None and live.interpreter)
        kind = _timed_kind(scope["method"], scope["path"], service)
        t0 = time.perf_counter()
        answer: list = [None, False]     # status sent, whole body sent

        async def watched(message) -> None:
            if message["type"] == "http.response.start":
                answer[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answer[1] = True
            await send(message)
        try:
            await self._relay(scope, receive, watched, sandbox_id, port)
        finally:
            self.metrics.relayed(service, answer[0], kind, time.perf_counter() - t0,
                                 complete=answer[1])

    async def _relay(self, scope: dict, receive, send, sandbox_id: str,
                     port: int | None) -> None:
        live = self.manager.lookup(sandbox_id)
        if live is None:
            return await _json(send, 502, not_found(sandbox_id))
        if port is None:
            return await _json(send, 400, {"code": 400, "sandboxId": sandbox_id,
                                           "message": "invalid sandbox port"})
        if port == AGENT_PORT:
            upstream = live.link
        else:
            upstream = live.port(port)
            if upstream is None:
                return await _json(send, 502, {
                    "sandboxId": sandbox_id, "code": 502, "port": port,
                    "message": "The sandbox is running but port is not open",
                })
        refusal = private_port_refusal(live, port, scope["headers"])
        if refusal is not None:
            return await _json(send, 401, refusal)
        path = scope["path"]
        to_agent = port == AGENT_PORT
        headers, token, chunked = forwarded_headers(scope["headers"], port)
        interpreter = port == CODE_INTERPRETER_PORT and live.interpreter
        expected = live.record.access_token if to_agent or interpreter else None
        if (expected is not None and path != "/health"
                and not hmac.compare_digest(token or b"", expected.encode())
                and not (to_agent and path == "/files" and b"signature=" in scope["query_string"])
                and not (interpreter and path != "/execute"
                         and _traffic_ok(scope["headers"], expected))):
            # Signed /files URLs carry no token; the agent checks their signature itself. The
            # code-interpreter SDK sends the access token with /execute only; its context calls
            # carry the traffic token instead.
            return await _json(send, 401, {"code": 401, "message": "invalid access token"})

        target = scope.get("raw_path") or path.encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        has_body = chunked or any(n == b"content-length" for n, _ in headers)
        body_done = asyncio.Event()
        tap = self._tap(live, scope, path) if to_agent else None

        async def body():
            try:
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        raise ClientGone()
                    chunk = msg.get("body", b"")
                    if chunk:
                        if tap is not None:
                            tap.request(chunk)
                        yield chunk
                    if not msg.get("more_body", False):
                        return
            finally:
                body_done.set()

        if not has_body:
            body_done.set()
        task = asyncio.current_task()
        live.streams.add(task)
        self._tasks.add(task)
        finished: list = []
        watcher = asyncio.create_task(
            self._watch_disconnect(receive, body_done, task, finished))
        started = False
        try:
            response = await upstream.request(
                scope["method"], target, headers, body() if has_body else None,
                chunked=chunked)
            try:
                out = [(n, v) for n, v in response.headers if n not in _HOP]
                await send({"type": "http.response.start", "status": response.status,
                            "headers": out})
                started = True
                if tap is not None:
                    tap.status = response.status
                async for chunk in response.aiter():
                    if tap is not None:
                        tap.response(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                finished.append(True)
                await send({"type": "http.response.body", "body": b""})
            finally:
                response.close()
        except asyncio.CancelledError:
            # Either the client went away (nothing left to answer) or the sandbox was killed:
            # its streams end abruptly, with no end event, as a dead sandbox's would.
            if watcher.done():
                return
            if self.manager.lookup(sandbox_id) is not None and not self._stopping:
                raise
            if not started:
                await _json(send, 502, not_found(sandbox_id) if not self._stopping else {
                    "sandboxId": sandbox_id, "code": 502, "message": "the server is stopping"})
        except ClientGone:
            pass
        except (UpstreamError, OSError, asyncio.IncompleteReadError) as exc:
            if started:
                return   # the response is cut short: the client sees a broken stream
            if (self.manager.lookup(sandbox_id) is None
                    or (upstream is live.link and await self.manager.vanished(sandbox_id))):
                await _json(send, 502, not_found(sandbox_id))
            else:
                await _json(send, 502, {
                    "sandboxId": sandbox_id, "code": 502, "port": port,
                    "message": f"The sandbox is running but port is not open: {exc}",
                })
        finally:
            watcher.cancel()
            live.streams.discard(task)
            self._tasks.discard(task)
            if tap is not None:
                try:
                    tap.close(detached=not finished)
                    if getattr(tap, "signalled", False):
                        self.manager.process_killed(sandbox_id)
                except Exception:   # noqa: BLE001 - the audit never breaks the relay
                    log.exception("recording %s %s of %s failed", scope["method"], path,
                                  sandbox_id)

    def _tap(self, live, scope: dict, path: str):
        """The audit observer of an agent request worth recording (a process started, a
        file read or written), or None."""
        method = scope["method"]
        store = self.manager.store
        if path == "/process.Process/Start" and method == "POST":
            return ProcessTap(store, live.record.id, basic_user(scope["headers"]),
                              live.record.env_vars.values())
        if path == "/files" and method in ("GET", "POST"):
            return FileTap(store, live.record.id, method, scope["query_string"],
                           scope["headers"])
        return None

    @staticmethod
    async def _watch_disconnect(receive, body_done: asyncio.Event, task: asyncio.Task,
                                finished: list) -> Any:
        """Cancel the proxy task as soon as the client disconnects after sending its body.

        Without a body the first message is the (empty) request itself; after the response
        the server reports a disconnect too, which ``finished`` tells apart.
        """
        await body_done.wait()
        while (await receive())["type"] != "http.disconnect":
            pass
        if not finished:
            task.cancel()
