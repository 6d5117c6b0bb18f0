"""Reading the name a connection asks for (HTTP Host, TLS server name), and the proxy's
verdict on it: strict, so that nothing ambiguous is guessed at."""

from __future__ import annotations

import ssl

import pytest

from hutch.runtime import hostname
from hutch.runtime.egress import EgressPolicy
from hutch.runtime.egress_proxy import ALLOWED_NAME, INWARD, LEARNED, MALFORMED, judge
from hutch.runtime.hostname import BAD, MORE, NONE, Requested, requested


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (Python's OpenSSL) asking for ``server_name``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("head, expected", [
    (b"GET / HTTP/1.1\r\nHost: Example.COM\r\n\r\n", ("http", "name", "example.com")),
    (b"GET / HTTP/1.1\r\nhost: example.com.:8080\r\nAccept: */*\r\n\r\n",
     ("http", "name", "example.com")),
    (b"GET http://example.com/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
     ("http", "name", "example.com")),
    (b"GET http://user@example.com:80/x HTTP/1.1\r\n\r\n", ("http", "name", "example.com")),
    (b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", ("http", "name", "example.com")),
    (b"GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n",
     ("http", "name", "xn--bcher-kva.example")),
    (b"GET / HTTP/1.0\r\n\r\n", ("http", NONE, None)),
    (b"GET / HTTP/1.1\r\nHost: 198.51.100.7\r\n\r\n", ("http", NONE, None)),
    (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", ("http", NONE, None)),
    (b"GET / HTTP/1.1\r\nHost: exa", ("http", MORE, None)),
    (b"GE", ("http", MORE, None)),
    # Ambiguous or malformed: refused.
    (b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n", ("http", BAD, None)),
    (b"GET http://b.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost: a.com\x00.b.com\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost: a .com\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.example\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost: *.a.com\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost: a.com:x\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\n Host: b.com\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\nHost : b.com\r\n\r\n", ("http", BAD, None)),
    (b"GET /\r\n\r\n", ("http", BAD, None)),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 6000, ("http", BAD, None)),
    # Neither HTTP nor TLS: judged by address.
    (b"SSH-2.0-OpenSSH_9.2\r\n", ("", NONE, None)),
    (b"\x00\x01binary", ("", NONE, None)),
    (b"", ("", MORE, None)),
])
def test_http_heads(head, expected):
    assert tuple(requested(head)) == expected


def test_tls_server_names_from_real_client_hellos():
    hello = client_hello("Files.Example.com")
    assert requested(hello) == Requested("tls", "name", "files.example.com")
    # Arriving in pieces: more is needed until the hello is whole.
    for cut in (1, 5, 40, len(hello) - 1):
        assert requested(hello[:cut]).outcome == MORE
    assert requested(client_hello(None)) == Requested("tls", NONE)
    # An IP literal is never sent as SNI by OpenSSL; no name is no name.
    assert requested(client_hello("198.51.100.7")).outcome == NONE


def test_a_client_hello_split_over_records_is_reassembled():
    hello = client_hello("example.com")
    body = hello[5:]
    split = b"".join(b"\x16\x03\x01" + len(part).to_bytes(2, "big") + part
                     for part in (body[:60], body[60:200], body[200:]))
    assert requested(split) == Requested("tls", "name", "example.com")


def test_odd_tls_is_refused():
    hello = bytearray(client_hello("example.com"))
    at = bytes(hello).find(b"example.com")
    hello[at + 3] = 0                                   # a NUL inside the name
    assert requested(bytes(hello)).outcome == BAD
    assert requested(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00").outcome == BAD  # not a hello
    assert requested(b"\x16\x03\x01\x00\x00").outcome == BAD                      # empty record
    garbage = b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c" + b"\xff" * 44
    assert requested(garbage).outcome == BAD
    assert requested(b"\x16\x03\x01\x40\x00" + b"\x01" * (hostname.MAX_HEAD + 10)).outcome == BAD


def test_verdicts():
    allow_list = EgressPolicy.parse(False, ["pypi.org", "198.51.100.0/25"])
    name = Requested("tls", "name", "pypi.org")
    other = Requested("tls", "name", "evil.example")
    nameless = Requested("", NONE)
    assert judge(allow_list, name, "198.51.100.200", False) == ("name", ALLOWED_NAME)
    assert judge(allow_list, other, "198.51.100.200", True).action == "refuse"  # shared address
    assert judge(allow_list, nameless, "198.51.100.200", True) == ("address", LEARNED)
    assert judge(allow_list, nameless, "198.51.100.200", False).action == "refuse"
    assert judge(allow_list, Requested("http", BAD), "198.51.100.200", True) == \
        ("refuse", MALFORMED)
    # E2B's allow-list shape behaves the same.
    e2b = EgressPolicy.parse(True, ["pypi.org"], ["0.0.0.0/0"])
    assert judge(e2b, other, "198.51.100.200", True).action == "refuse"
    assert judge(e2b, name, "198.51.100.200", False).action == "name"
    # A block-list with the internet open: the denied name anywhere, the rest as dialled.
    block = EgressPolicy.parse(True, None, ["*.evil.example"])
    assert judge(block, Requested("http", "name", "a.evil.example"), "198.51.100.200",
                 False).action == "refuse"
    assert judge(block, other, "198.51.100.200", False).action == "address"
    assert INWARD  # the proxy's reason when an allowed name resolves inward
