"""Control-plane calls retry a busy server (429/503) and then give up with its error.

A tiny real HTTP server on loopback plays the busy hutch server: the subject here is the
client's retry policy, which a healthy server would never exercise.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hutch import errors
from hutch.sdk import _config
from hutch.sdk._async.transport import AsyncTransport
from hutch.sdk._sync.transport import Transport


class BusyServer:
    """Answers the queued (status, headers) in order, then 200 {"ok": true}."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.seen = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen += 1
                status, headers = outer.answers.pop(0) if outer.answers else (200, {})
                body = json.dumps({"code": status, "message": f"status {status}"}
                                  if status >= 300 else {"ok": True}).encode()
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return _config.resolve(url=f"http://127.0.0.1:{self.httpd.server_port}", api_key="k")

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_sync_retries_then_succeeds():
    server = BusyServer([(503, {}), (429, {"Retry-After": "0"})])
    with server as config, Transport(config) as transport:
        assert transport.api("GET", "/x").json() == {"ok": True}
    assert server.seen == 3


async def test_async_gives_up_after_three_attempts():
    server = BusyServer([(503, {"Retry-After": "0"})] * 5)
    with server as config:
        async with AsyncTransport(config) as transport:
            with pytest.raises(errors.UnavailableError):
                await transport.api("GET", "/x")
    assert server.seen == 3


def test_no_retry_when_told_not_to_or_for_other_errors():
    server = BusyServer([(503, {"Should-Retry": "false"}), (500, {})])
    with server as config, Transport(config) as transport:
        with pytest.raises(errors.UnavailableError):
            transport.api("GET", "/x")
        with pytest.raises(errors.SandboxError):
            transport.api("GET", "/x")
    assert server.seen == 2
