"""Which requests are for a sandbox (data plane) and which for the API (control plane)."""

from __future__ import annotations

from hutch.server.proxy import AGENT_PORT, route


def _scope(*headers: tuple[str, str]) -> dict:
    return {"headers": [(k.lower().encode(), v.encode()) for k, v in headers]}


def test_header_routing():
    assert route(_scope(("E2b-Sandbox-Id", "abc123"), ("E2b-Sandbox-Port", "49999")), "") == \
        ("abc123", 49999)
    assert route(_scope(("E2b-Sandbox-Id", "abc123")), "") == ("abc123", AGENT_PORT)
    assert route(_scope(("E2b-Sandbox-Id", "abc"), ("E2b-Sandbox-Port", "x")), "") == \
        ("abc", None)
    assert route(_scope(("Host", "127.0.0.1:7711")), "") is None


def test_host_routing_only_under_the_domain():
    d = "sbx.example.test"
    assert route(_scope(("Host", f"49983-abc123.{d}")), d) == ("abc123", 49983)
    assert route(_scope(("Host", f"8080-abc123.{d}:443")), d) == ("abc123", 8080)
    assert route(_scope(("Host", f"api.{d}")), d) is None
    assert route(_scope(("Host", f"49983-abc123.other.test")), d) is None
    assert route(_scope(("Host", f"49983-a.b.{d}")), d) is None
    assert route(_scope(("Host", f"49983-abc123.{d}")), "") is None    # no domain configured
    assert route(_scope(("Host", f"99999-abc.{d}")), d) == ("abc", None)


def test_forwarded_headers():
    from hutch.server.proxy import forwarded_headers
    incoming = [(b"host", b"h"), (b"connection", b"keep-alive"), (b"x-access-token", b"t"),
                (b"e2b-sandbox-id", b"abc"), (b"transfer-encoding", b"chunked"),
                (b"content-type", b"application/connect+json"), (b"te", b"trailers")]
    out, token, chunked = forwarded_headers(incoming, AGENT_PORT)
    assert token == b"t" and chunked
    assert out == [(b"host", b"h"), (b"x-access-token", b"t"), (b"e2b-sandbox-id", b"abc"),
                   (b"content-type", b"application/connect+json")]
    out, token, chunked = forwarded_headers(incoming, 8080)      # a user's web app
    assert out == [(b"host", b"h"), (b"content-type", b"application/connect+json")]
    out, _, _ = forwarded_headers(incoming, 49999)                # the code interpreter
    assert (b"x-access-token", b"t") in out and (b"e2b-sandbox-id", b"abc") not in out
