"""The data plane's access token cannot be side-stepped by how a request is spelled.

The server lets two things through to a secure sandbox's agent without the token, ``/health``
and ``/files`` with a URL signature (which the agent checks), so every spelling that a parser
could read as one of those while the agent reads it as something else is tried here: double
slashes, dot segments, percent-encoding, fragments, absolute-form targets, a signature in the
query of another path, conflicting body framing. Raw sockets, so nothing normalizes the
request on the way.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

STAT = b"/filesystem.Filesystem/Stat"
TRICKS = [
    STAT, b"/" + STAT, b"/health/.." + STAT, b"/files/.." + STAT, b"/health/%2e%2e" + STAT,
    b"/%66ilesystem.Filesystem/Stat", STAT + b"?signature=x", STAT + b"?x=1&signature=v1_x",
    b"/files/.." + STAT + b"?signature=x", b"http://x" + STAT, b"/health%23" + STAT,
    b"/health%3F" + STAT, b"/health%00" + STAT, b"/health;" + STAT,
]


def _raw(url: str, data: bytes) -> bytes:
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture
def secure_sandbox(hutch_server):
    req = urllib.request.Request(
        hutch_server.url + "/sandboxes", method="POST",
        data=json.dumps({"templateID": "base"}).encode(),
        headers={"X-API-KEY": hutch_server.api_key, "Content-Type": "application/json"})
    sbx = json.loads(urllib.request.urlopen(req, timeout=60).read())
    yield sbx["sandboxID"], sbx["envdAccessToken"].encode()
    urllib.request.urlopen(urllib.request.Request(
        f"{hutch_server.url}/sandboxes/{sbx['sandboxID']}", method="DELETE",
        headers={"X-API-KEY": hutch_server.api_key}), timeout=60)


def _stat(url: str, sid: str, target: bytes, extra: bytes = b"") -> bytes:
    body = b'{"path":"/etc/hostname"}'
    return _raw(url, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: "
                + sid.encode() + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_no_spelling_of_a_request_skips_the_access_token(hutch_server, secure_sandbox):
    sid, token = secure_sandbox
    ok = _stat(hutch_server.url, sid, STAT, b"X-Access-Token: " + token + b"\r\n")
    assert ok.startswith(b"HTTP/1.1 200") and b"hostname" in ok
    for target in TRICKS:
        answer = _stat(hutch_server.url, sid, target)
        assert b"hostname" not in answer and not answer.startswith(b"HTTP/1.1 2"), \
            (target, answer[:300])
    # A wrong token, a token in another header's case, or a good one next to a bad one
    for extra in (b"X-Access-Token: " + token[:-1] + b"\r\n",
                  b"X-Access-Token: bad\r\nX-Access-Token: " + token + b"\r\n",
                  b"X-Access-Token: " + token + b"\r\nX-Access-Token: bad\r\n"):
        answer = _stat(hutch_server.url, sid, STAT, extra)
        assert b"hostname" not in answer, (extra, answer[:300])


def test_conflicting_body_framing_is_refused_before_the_agent(hutch_server, secure_sandbox):
    sid, token = secure_sandbox
    body = b'{"path":"/etc/hostname"}'
    smuggled = (b"POST /filesystem.Filesystem/Stat HTTP/1.1\r\nHost: x\r\n")
    answer = _raw(hutch_server.url,
                  b"POST " + STAT + b" HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: " + sid.encode()
                  + b"\r\nX-Access-Token: " + token + b"\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n" + smuggled)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1") == 1
