"""The little of the DNS wire format the forwarder's policy needs (RFC 1035): the question of
a query, the address records of an answer, and error answers made locally. No I/O.

Parsing is strict and bounded: a malformed message raises ValueError, never loops (compression
pointers may only point backwards, and at most 64 of them are followed per name).
"""

from __future__ import annotations

import socket
import struct

TYPE_A = 1
NXDOMAIN = 3
SERVFAIL = 2
REFUSED = 5


def _name(msg: bytes, pos: int) -> tuple[str, int]:
    """The name at ``pos`` (lower-case, no trailing dot) and the offset after it."""
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if pos >= len(msg):
            raise ValueError("name runs past the message")
        n = msg[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(msg) or jumps > 64:
                raise ValueError("bad compression pointer")
            target = ((n & 0x3F) << 8) | msg[pos + 1]
            if target >= pos:
                raise ValueError("compression pointer points forward")
            if end is None:
                end = pos + 2
            pos, jumps = target, jumps + 1
            continue
        if n & 0xC0:
            raise ValueError("unknown label type")
        if n == 0:
            break
        label = msg[pos + 1:pos + 1 + n]
        if len(label) != n:
            raise ValueError("label runs past the message")
        labels.append(label.decode("latin-1").lower())
        pos += n + 1
    return ".".join(labels), (end if end is not None else pos + 1)


def question(msg: bytes) -> tuple[str, int, int]:
    """``(name, qtype, offset after the question)`` of a message's first question."""
    if len(msg) < 12:
        raise ValueError("shorter than a DNS header")
    (qdcount,) = struct.unpack("!H", msg[4:6])
    if qdcount < 1:
        raise ValueError("no question")
    name, pos = _name(msg, 12)
    if pos + 4 > len(msg):
        raise ValueError("question runs past the message")
    qtype, _ = struct.unpack("!HH", msg[pos:pos + 4])
    return name, qtype, pos + 4


def addresses(answer: bytes) -> list[tuple[str, int]]:
    """The IPv4 addresses (with their TTLs) in an answer's answer section."""
    _, _, pos = question(answer)
    qdcount, ancount = struct.unpack("!HH", answer[4:8])
    for _ in range(qdcount - 1):
        _, pos = _name(answer, pos)
        pos += 4
    out = []
    for _ in range(ancount):
        _, pos = _name(answer, pos)
        if pos + 10 > len(answer):
            raise ValueError("record runs past the message")
        rtype, _, ttl, rdlength = struct.unpack("!HHIH", answer[pos:pos + 10])
        pos += 10
        rdata = answer[pos:pos + rdlength]
        if len(rdata) != rdlength:
            raise ValueError("record data runs past the message")
        if rtype == TYPE_A and rdlength == 4:
            out.append((socket.inet_ntoa(rdata), ttl))
        pos += rdlength
    return out


def error(query: bytes, rcode: int) -> bytes:
    """An answer to ``query`` with no records and ``rcode`` (its question echoed)."""
    _, _, end = question(query)
    qid, flags = struct.unpack("!HH", query[:4])
    flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode       # QR, RD as asked, RA, rcode
    return struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0) + query[12:end]


def query(name: str, qid: int, qtype: int = TYPE_A) -> bytes:
    """A recursive query for ``name`` (canonical, no trailing dot), as a stub resolver sends."""
    labels = b"".join(bytes([len(label)]) + label.encode("ascii")
                      for label in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack("!HH", qtype, 1)
