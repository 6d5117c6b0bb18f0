"""The DNS wire bits the resolver's policy reads: questions, address records, local errors,
and malformed messages refused rather than followed."""

from __future__ import annotations

import socket
import struct

import pytest

from hutch.runtime import dnsmsg


def query(name: str, qtype: int = 1, qid: int = 0x4242) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, 1)


def answer_with_cname(q: bytes) -> bytes:
    target = b"\x03cdn\x07example\x03net\x00"
    cname = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 30, len(target)) + target
    at = 12 + len(q) - 12 + 12        # the CNAME target's offset, pointed to by the A record
    a = struct.pack("!H", 0xC000 | at) + struct.pack("!HHIH", 1, 1, 300, 4) + \
        socket.inet_aton("198.51.100.7")
    return struct.pack("!HHHHHH", 0x4242, 0x8180, 1, 2, 0, 0) + q[12:] + cname + a


def test_question_and_addresses():
    q = query("WWW.Example.com")
    assert dnsmsg.question(q)[:2] == ("www.example.com", 1)
    assert dnsmsg.addresses(answer_with_cname(q)) == [("198.51.100.7", 300)]


def test_local_errors_echo_the_question():
    q = query("exfil.example.com")
    err = dnsmsg.error(q, dnsmsg.NXDOMAIN)
    qid, flags, qd, an = struct.unpack("!HHHH", err[:8])
    assert (qid, flags & 0x800F, qd, an) == (0x4242, 0x8003, 1, 0)
    assert err[12:] == q[12:]


@pytest.mark.parametrize("bad", [
    b"\x00" * 5,
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c",           # points at itself
    struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05ab",             # label past the end
    struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # no question
])
def test_malformed_messages_raise(bad):
    with pytest.raises(ValueError):
        dnsmsg.question(bad)
