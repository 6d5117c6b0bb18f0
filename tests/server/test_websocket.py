"""WebSockets to a sandbox port, end to end: a real server, a real sandbox, and inside it a
small RFC 6455 echo server written with the standard library only (the sandbox's python has
no WebSocket package)."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

pytestmark = pytest.mark.timeout(300)

PORT = 8765

_ECHO = r'''
import base64, hashlib, json, socket, socketserver, struct
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

def exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data

def read_frame(f):
    b1, b2 = exact(f, 2)
    n = b2 & 0x7F
    if n == 126:
        n, = struct.unpack("!H", exact(f, 2))
    elif n == 127:
        n, = struct.unpack("!Q", exact(f, 8))
    mask = exact(f, 4) if b2 & 0x80 else None
    data = exact(f, n)
    if mask and n:
        m = (mask * (n // 4 + 1))[:n]
        data = (int.from_bytes(data, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")
    return b1 & 0x80, b1 & 0x0F, data

def frame(op, data, fin=True):
    n = len(data)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + data

class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        f, w = self.rfile, self.wfile
        path = f.readline().decode().split()[1]
        headers = {}
        while (line := f.readline().decode().strip()):
            k, _, v = line.partition(":")
            headers.setdefault(k.strip().lower(), v.strip())
        if path.startswith("/reject"):
            body = b"no socket here"
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        key = headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        head = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + "\r\n"
                "Set-Cookie: seen=1\r\n")
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        if "echo.v2" in offered:
            head += "Sec-WebSocket-Protocol: echo.v2\r\n"
        w.write((head + "\r\n").encode())
        parts, kind = [], 1
        try:
            while True:
                fin, op, data = read_frame(f)
                if op == 8:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    with open("/tmp/ws-close", "w") as out:
                        json.dump([code, data[2:].decode()], out)
                    w.write(frame(8, data))
                    return
                if op == 9:
                    w.write(frame(10, data))
                    continue
                if op == 10:
                    with open("/tmp/ws-pong", "wb") as out:
                        out.write(data)
                    continue
                if op in (1, 2):
                    kind, parts = op, [data]
                elif op == 0:
                    parts.append(data)
                if not fin:
                    continue
                msg = b"".join(parts)
                if kind == 1 and msg == b"info":
                    w.write(frame(1, json.dumps({"path": path, "headers": headers}).encode()))
                elif kind == 1 and msg.startswith(b"close "):
                    _, code, reason = msg.split(b" ", 2)
                    w.write(frame(8, struct.pack("!H", int(code)) + reason))
                    while read_frame(f)[1] != 8:
                        pass
                    return
                elif kind == 1 and msg == b"drop":
                    self.request.shutdown(socket.SHUT_RDWR)
                    return
                elif kind == 1 and msg == b"fragments":
                    w.write(frame(1, b"frag", fin=False) + frame(0, b"men", fin=False)
                            + frame(9, b"ping?") + frame(0, b"ted"))
                else:
                    w.write(frame(kind, msg))
        except (EOFError, OSError):
            pass

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

Server(("0.0.0.0", PORT), Echo).serve_forever()
'''.replace("PORT", str(PORT))


@pytest.fixture(scope="module")
def api(hutch_server):
    with httpx.Client(base_url=hutch_server.url, headers={"X-API-KEY": hutch_server.api_key},
                      timeout=60) as client:
        yield client


@contextmanager
def _echo_sandbox(hutch_server, api):
    """A sandbox running the echo server on PORT, killed at the end."""
    from e2b import Sandbox
    r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 600})
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    TRAFFIC_TOKENS[sid] = r.json()["trafficAccessToken"]
    try:
        sbx = Sandbox.connect(sid, api_key=hutch_server.api_key, api_url=hutch_server.url,
                              sandbox_url=hutch_server.url)
        sbx.files.write("/tmp/echo.py", _ECHO)
        sbx.commands.run("python3 /tmp/echo.py", background=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                with _open(hutch_server, sid, "/ready"):
                    break
            except InvalidStatus as exc:
                if exc.response.status_code != 502 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield sid, sbx
    finally:
        api.delete(f"/sandboxes/{sid}")


@pytest.fixture(scope="module")
def sandbox(hutch_server, api):
    """One echo sandbox for the module (the tests only talk to it)."""
    with _echo_sandbox(hutch_server, api) as made:
        yield made


def _wait_for_file(sbx, path: str) -> str:
    """What a file inside the sandbox holds once it has content (the echo server writes it
    from its own thread)."""
    deadline = time.monotonic() + 30
    while True:
        out = sbx.commands.run(f"cat {path} 2>/dev/null || true").stdout
        if out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


# Ports are private by default: their requests carry the sandbox's traffic token.
TRAFFIC_TOKENS: dict[str, str] = {}


def _open(server, sid: str, path: str = "/", port: int = PORT, token: bool = True, **kw):
    headers = {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port),
               **kw.pop("headers", {})}
    if token and sid in TRAFFIC_TOKENS:
        headers["E2B-Traffic-Access-Token"] = TRAFFIC_TOKENS[sid]
    return connect("ws" + server.url.removeprefix("http") + path, additional_headers=headers,
                   max_size=8 * 2**20, open_timeout=30, close_timeout=30, **kw)


def test_a_private_port_refuses_a_handshake_without_the_token(hutch_server, sandbox):
    sid, _ = sandbox
    with pytest.raises(InvalidStatus) as err:
        with _open(hutch_server, sid, token=False):
            pass
    assert err.value.response.status_code == 401


def test_text_and_binary_messages_echo(hutch_server, sandbox):
    sid, sbx = sandbox
    with _open(hutch_server, sid) as ws:
        ws.send("hello, sandbox")
        assert ws.recv(timeout=30) == "hello, sandbox"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=30) == b"\x00\x01\xff"
        ws.send("")
        assert ws.recv(timeout=30) == ""
        # A message the sandbox's server fragments (with a ping between the pieces) arrives
        # whole, and pings on either hop are answered.
        ws.send("fragments")
        assert ws.recv(timeout=30) == "fragmented"
        ws.ping(b"hop").wait(30)
        # The relay answered the sandbox server's ping (seen there a moment later).
        assert _wait_for_file(sbx, "/tmp/ws-pong") == "ping?"
        # Pipelined messages come back whole and in order.
        for i in range(300):
            ws.send(f"m{i}" if i % 2 else f"m{i}".encode())
        assert [ws.recv(timeout=30) for _ in range(300)] == [
            f"m{i}" if i % 2 else f"m{i}".encode() for i in range(300)]


def test_large_messages(hutch_server, sandbox):
    sid, _ = sandbox
    blob = os.urandom(2**20)
    text = "ü" * (2**19)   # 1 MiB of UTF-8
    with _open(hutch_server, sid) as ws:
        ws.send(blob)
        assert ws.recv(timeout=60) == blob
        ws.send(text)
        assert ws.recv(timeout=60) == text


def test_handshake_carries_path_query_headers_and_subprotocol(hutch_server, sandbox):
    sid, _ = sandbox
    with _open(hutch_server, sid, "/chat/room%201?user=ann&x=1",
               headers={"X-Custom": "yes", "Cookie": "a=b", "X-Access-Token": "secret"},
               subprotocols=["nope", "echo.v2"]) as ws:
        assert ws.subprotocol == "echo.v2"
        assert ws.response.headers["Set-Cookie"] == "seen=1"
        ws.send("info")
        info = json.loads(ws.recv(timeout=30))
    assert info["path"] == "/chat/room%201?user=ann&x=1"
    seen = info["headers"]
    assert seen["x-custom"] == "yes" and seen["cookie"] == "a=b"
    assert seen["host"] == hutch_server.url.removeprefix("http://")
    assert seen["sec-websocket-protocol"] == "nope, echo.v2"
    # Routing headers and the agent's credential stay with the server.
    assert not any(k.startswith("e2b-") for k in seen) and "x-access-token" not in seen


def test_close_codes_pass_both_ways(hutch_server, sandbox):
    sid, sbx = sandbox
    with _open(hutch_server, sid) as ws:
        ws.send("close 4001 server says bye")
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=30)
    assert caught.value.rcvd.code == 4001 and caught.value.rcvd.reason == "server says bye"

    sbx.commands.run("rm -f /tmp/ws-close")
    with _open(hutch_server, sid) as ws:
        ws.send("x")
        assert ws.recv(timeout=30) == "x"
        ws.close(4002, "client says bye")
    assert ws.close_code == 4002   # the sandbox's server echoed it back through
    assert json.loads(_wait_for_file(sbx, "/tmp/ws-close")) == [4002, "client says bye"]

    # A sandbox server that drops the connection without a close frame: 1014, bad gateway.
    with _open(hutch_server, sid) as ws:
        ws.send("drop")
        with pytest.raises(ConnectionClosed) as caught:
            ws.recv(timeout=30)
    assert caught.value.rcvd.code == 1014


def _refused(server, sid: str, path: str = "/", port: int = PORT):
    with pytest.raises(InvalidStatus) as caught:
        with _open(server, sid, path, port=port):
            pass
    return caught.value.response


def test_refused_handshakes(hutch_server, sandbox):
    sid, _ = sandbox
    gone = _refused(hutch_server, "nosuchsandbox1234")
    assert gone.status_code == 502 and b"was not found" in gone.body
    closed = _refused(hutch_server, sid, port=8766)
    assert closed.status_code == 502 and b"port is not open" in closed.body
    # The sandbox server's own refusal comes through as it was.
    own = _refused(hutch_server, sid, "/reject")
    assert own.status_code == 404 and own.body == b"no socket here"
    agent = _refused(hutch_server, sid, port=49983)
    assert agent.status_code == 404
    bad = _refused(hutch_server, sid, port=99999)
    assert bad.status_code == 400
    # Without sandbox headers there is nothing to connect to: the control plane has no
    # WebSocket endpoints.
    with pytest.raises(InvalidStatus) as caught:
        with connect("ws" + hutch_server.url.removeprefix("http") + "/sandboxes",
                     open_timeout=30):
            pass
    assert caught.value.response.status_code == 403


def test_many_connections_at_once(hutch_server, sandbox):
    sid, _ = sandbox
    with ExitStack() as stack:
        sockets = [stack.enter_context(_open(hutch_server, sid)) for _ in range(8)]
        for i, ws in enumerate(sockets):
            ws.send(f"n{i}")
        assert [ws.recv(timeout=30) for ws in sockets] == [f"n{i}" for i in range(8)]


def test_killing_the_sandbox_closes_its_websockets(hutch_server, api):
    with _echo_sandbox(hutch_server, api) as (sid, _):
        with _open(hutch_server, sid) as ws:
            ws.send("before")
            assert ws.recv(timeout=30) == "before"
            assert api.delete(f"/sandboxes/{sid}").status_code == 204
            with pytest.raises(ConnectionClosed) as caught:
                ws.recv(timeout=60)
        assert caught.value.rcvd.code == 1001
        assert _refused(hutch_server, sid).status_code == 502


def test_server_stop_closes_with_1012_and_the_next_server_relays_again(hutch_server, api):
    """Stopping the server closes its WebSockets with 1012 (on both sides); the sandbox keeps
    running and the next server relays to it again. Runs last: it restarts the session's
    server in place (same object, new process and port)."""
    from tests.conftest import start_server, stop_server
    with _echo_sandbox(hutch_server, api) as (sid, sbx):
        sbx.commands.run("rm -f /tmp/ws-close")
        with _open(hutch_server, sid) as ws:
            ws.send("before")
            assert ws.recv(timeout=30) == "before"
            try:
                stop_server(hutch_server)
                with pytest.raises(ConnectionClosed) as caught:
                    ws.recv(timeout=60)
            finally:
                fresh = start_server()
                for name in ("url", "api_key", "process", "env"):
                    setattr(hutch_server, name, getattr(fresh, name))
        assert caught.value.rcvd.code == 1012
        api.base_url = hutch_server.url
        from e2b import Sandbox
        again = Sandbox.connect(sid, api_key=hutch_server.api_key, api_url=hutch_server.url,
                                sandbox_url=hutch_server.url)
        assert json.loads(_wait_for_file(again, "/tmp/ws-close"))[0] == 1012
        with _open(hutch_server, sid) as ws:
            ws.send("after")
            assert ws.recv(timeout=30) == "after"
