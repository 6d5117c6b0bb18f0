"""``CONNECT 127.0.0.1:<port>``: how the server reaches a port of a sandbox without a network.
Only the sandbox's own loopback, and only with the access token once one is set."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.agent.conftest import AgentProcess, Client


@pytest.fixture(scope="module")
def agent():
    proc = AgentProcess()
    yield proc
    proc.stop()


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def _connect(agent, target: str, token: str | None = None) -> tuple[bytes, socket.socket]:
    s = socket.create_connection(("127.0.0.1", agent.port), timeout=10)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if token:
        head += f"X-Access-Token: {token}\r\n"
    s.sendall((head + "\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer, s


def test_a_tunnel_to_a_loopback_port(agent):
    srv, port = _echo_server()
    try:
        answer, s = _connect(agent, f"127.0.0.1:{port}")
        with s:
            assert answer.startswith(b"HTTP/1.1 200")
            s.sendall(b"through the agent")
            assert s.recv(100) == b"THROUGH THE AGENT"
    finally:
        srv.close()


@pytest.mark.parametrize("target", ["198.51.100.10:80", "example.com:443", "127.0.0.1:0",
                                    "127.0.0.1:http"])
def test_only_loopback_ports(agent, target):
    answer, s = _connect(agent, target)
    s.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer


def test_a_closed_port_and_the_token(agent):
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    answer, s = _connect(agent, f"127.0.0.1:{port}")
    s.close()
    assert answer.startswith(b"HTTP/1.1 502")
    client = Client(agent.url)
    try:
        assert client.http.post("/init", json={"accessToken": "tok"}).status_code == 204
        answer, s = _connect(agent, f"127.0.0.1:{port}")
        s.close()
        assert answer.startswith(b"HTTP/1.1 401")
    finally:
        client.http.post("/init", json={"accessToken": None}, headers={"X-Access-Token": "tok"})
        client.close()
