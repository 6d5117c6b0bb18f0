"""The API from an abuser's side: traversal in every path parameter, malformed Connect
envelopes, huge request heads and clients that trickle them. Each is answered cleanly (a
4xx with a JSON reason, or a closed connection), and the server stays healthy and bounded."""

from __future__ import annotations

import json
import socket
import struct
import time
from urllib.parse import urlsplit

import httpx
import pytest

from hutch import Sandbox

pytestmark = pytest.mark.timeout(300)

TRAVERSALS = ["..", "../..", "..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%00b", "%2F", "....//",
              "..\\..", "%252e%252e", "x" * 300]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _healthy(url: str) -> bool:
    return httpx.get(url + "/health", timeout=10).status_code == 200


def test_traversal_in_every_path_parameter(hutch_server):
    url, key = hutch_server.url, hutch_server.api_key
    headers = {"X-API-KEY": key}
    paths = ["/sandboxes/{}", "/sandboxes/{}/connect", "/sandboxes/{}/timeout",
             "/sandboxes/{}/network", "/sandboxes/{}/egress", "/sandboxes/{}/metrics",
             "/sandboxes/{}/audit", "/sandboxes/{}/snapshots", "/sandboxes/{}/fork",
             "/templates/{}", "/keys/{}"]
    import http.client

    # http.client sends the path exactly as written (httpx would resolve the dot segments).
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        for template in paths:
            for bad in TRAVERSALS:
                for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                    path = template.format(bad)
                    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                    conn.request(method, path, body=body,
                                 headers={**headers, "Content-Type": "application/json"})
                    r = conn.getresponse()
                    content = r.read()
                    assert 400 <= r.status < 500, (method, path, r.status, content[:300])
                    if content:
                        assert "message" in json.loads(content), (method, path, content)
    finally:
        conn.close()
    assert _healthy(url)


def test_malformed_connect_envelopes(hutch_server):
    with Sandbox.create(api_key=hutch_server.api_key, url=hutch_server.url) as sbx:
        try:
            headers = {**sbx.get_headers(49983), "Content-Type": "application/connect+json",
                       "Connect-Protocol-Version": "1"}
            bodies = [
                b"",                                           # nothing
                b"\x00\x00\x00",                               # a truncated prefix
                b"\x00\x7f\xff\xff\xff{}",                     # a length far past the body
                b"\x00\x00\x00\x00\x05{\"pro",                 # a truncated message
                b"\x00\x00\x00\x00\x02[]",                     # not an object
                b"\x01\x00\x00\x00\x02{}",                     # "compressed", unannounced
                struct.pack(">BI", 0, 9) + b"not json!",       # not JSON
                b"{\"process\": {\"cmd\": \"true\"}}",         # no envelope at all
            ]
            for body in bodies:
                r = httpx.post(hutch_server.url + "/process.Process/Start", content=body,
                               headers=headers, timeout=30)
                assert r.status_code < 500 or r.status_code == 200, (body, r.status_code)
                if r.status_code == 200:        # a Connect stream: it must end in an error
                    assert b"error" in r.content, (body, r.content)
            # The agent is unharmed.
            assert sbx.commands.run("echo fine").stdout == "fine\n"
        finally:
            sbx.kill()
    assert _healthy(hutch_server.url)


def test_a_huge_request_head_is_refused_and_memory_stays_bounded(hutch_server):
    host, port = urlsplit(hutch_server.url).hostname, urlsplit(hutch_server.url).port
    before = _rss_kib(hutch_server.process.pid)
    for _ in range(3):
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            answer = b""
            try:
                for _ in range(2000):                  # up to 32 MiB, if nothing stops it
                    s.sendall(b"a" * 16384)
            except OSError:
                pass                                   # refused and closed mid-send
            try:
                answer = s.recv(4096)
            except OSError:
                pass
            assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:200]
    grown = _rss_kib(hutch_server.process.pid) - before
    assert grown < 64 * 1024, f"the server grew by {grown} KiB"
    assert _healthy(hutch_server.url)


def test_a_trickling_client_is_cut_off_and_others_are_served(hutch_server):
    """The session's server runs with HUTCH_HTTP_HEAD_TIMEOUT=5 (tests/conftest.py)."""
    host, port = urlsplit(hutch_server.url).hostname, urlsplit(hutch_server.url).port
    slow = [socket.create_connection((host, port), timeout=60) for _ in range(20)]
    silent = socket.create_connection((host, port), timeout=60)   # connects, says nothing
    try:
        deadline = time.monotonic() + 60
        closed = set()
        sent = b"GET /health HTTP/1.1\r\nHost: x\r\n"
        i = 0
        while len(closed) < len(slow) and time.monotonic() < deadline:
            for n, s in enumerate(slow):
                if n in closed:
                    continue
                try:
                    s.sendall(sent[i % len(sent):i % len(sent) + 1] or b"x")
                except OSError:
                    closed.add(n)
            assert _healthy(hutch_server.url)          # everyone else is served meanwhile
            i += 1
            time.sleep(0.5)
            for n, s in enumerate(slow):
                s.setblocking(False)
                try:
                    data = s.recv(4096)
                    if data.startswith(b"HTTP/1.1 408") or data == b"":
                        closed.add(n)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.add(n)
                s.setblocking(True)
        assert len(closed) == len(slow), f"{len(slow) - len(closed)} trickling clients held on"
        silent.settimeout(30)
        answer = silent.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert "not sent within" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["message"]
    finally:
        for s in slow + [silent]:
            s.close()
