"""The name a connection asks for, read from its first bytes: the Host of an HTTP request or
the server name (SNI) of a TLS ClientHello. No I/O.

The egress proxy (egress_proxy.py) judges a connection by this name, not by the address the
sandbox dialled, and then dials the name itself. So the parsing is strict: anything ambiguous
(two Host headers, an absolute URL naming another host, NUL bytes, a malformed hello) is
``BAD`` and refused, never guessed at.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple, Optional

from hutch.runtime.egress import normalize_name

MAX_HEAD = 32 * 1024        # what we read before giving up on finding a name

#: Outcomes besides a name: more bytes needed, no name in this protocol, a broken request.
MORE, NONE, BAD = "more", "none", "bad"

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
            b"CONNECT ", b"TRACE ", b"PROPFIND ", b"MKCOL ", b"COPY ", b"MOVE ", b"LOCK ",
            b"UNLOCK ", b"PROPPATCH ", b"REPORT ", b"SEARCH ")


class Requested(NamedTuple):
    protocol: str           # "http", "tls" or "" (neither)
    outcome: str            # MORE, NONE, BAD, or "name"
    name: Optional[str] = None   # canonical (egress.normalize_name), when outcome == "name"


def requested(head: bytes) -> Requested:
    """What the first bytes ``head`` of a connection ask for."""
    if not head:
        return Requested("", MORE)
    if head[0] == 0x16:
        return _tls(head)
    if any(head.startswith(m) or m.startswith(head) for m in _METHODS):
        return _http(head)
    return Requested("", NONE)


def _canonical(protocol: str, host: str) -> Requested:
    """A host as written by a client: a literal address is no name (judged by address), a
    port is dropped, anything that is not a clean domain name is BAD."""
    if host.startswith("["):                    # [IPv6]:port
        return Requested(protocol, NONE)
    if host.count(":") == 1:
        host, port = host.split(":")
        if not port.isdigit():
            return Requested(protocol, BAD)
    try:
        ipaddress.ip_address(host)
        return Requested(protocol, NONE)
    except ValueError:
        pass
    if any(not 0x21 <= ord(c) < 0x7F for c in host):   # NUL, spaces, controls, non-ASCII
        return Requested(protocol, BAD)
    name = normalize_name(host)
    if name is None or name.startswith("*."):
        return Requested(protocol, BAD)
    return Requested(protocol, "name", name)


def _http(head: bytes) -> Requested:
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return Requested("http", BAD if len(head) >= MAX_HEAD else MORE)
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError:
        return Requested("http", BAD)
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return Requested("http", BAD)
    hosts = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if not sep or key != key.strip():
            return Requested("http", BAD)       # obsolete line folding, or smuggling bait
        if key.lower() == "host":
            hosts.append(value.strip())
    if len(hosts) > 1:
        return Requested("http", BAD)
    target = parts[1]
    if parts[0] == "CONNECT":
        hosts.append(target)
    elif "://" in target:                      # absolute form: its host wins (RFC 9112 3.2.2)
        authority = target.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
        if hosts and hosts[0].lower() != authority.lower():
            return Requested("http", BAD)
        hosts = [authority]
    if not hosts:
        return Requested("http", NONE)         # HTTP/1.0 without Host: judged by address
    return _canonical("http", hosts[0])


def _tls(head: bytes) -> Requested:
    """The server_name of a ClientHello, which may span several TLS records."""
    body = bytearray()
    pos = 0
    while True:
        if len(head) < pos + 5:
            return Requested("tls", MORE if len(head) < MAX_HEAD else BAD)
        kind, _, length = struct.unpack_from("!BHH", head, pos)
        if kind != 0x16 or length == 0:
            return Requested("tls", BAD)
        if len(head) < pos + 5 + length:
            return Requested("tls", MORE if len(head) < MAX_HEAD else BAD)
        body += head[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(body) >= 4:
            if body[0] != 1:                   # not a ClientHello
                return Requested("tls", BAD)
            need = 4 + int.from_bytes(body[1:4], "big")
            if len(body) >= need:
                return _client_hello(bytes(body[4:need]))


def _client_hello(hello: bytes) -> Requested:
    try:
        pos = 2 + 32                                       # version, random
        pos += 1 + hello[pos]                              # session id
        pos += 2 + struct.unpack_from("!H", hello, pos)[0]  # cipher suites
        pos += 1 + hello[pos]                              # compression methods
        if pos == len(hello):
            return Requested("tls", NONE)                  # no extensions at all
        (total,) = struct.unpack_from("!H", hello, pos)
        pos += 2
        end = pos + total
        if end > len(hello):
            return Requested("tls", BAD)
        found = None
        while pos + 4 <= end:
            kind, length = struct.unpack_from("!HH", hello, pos)
            pos += 4
            if pos + length > end:
                return Requested("tls", BAD)
            if kind == 0:                                  # server_name
                if found is not None:
                    return Requested("tls", BAD)
                found = _server_name(hello[pos:pos + length])
                if found is None:
                    return Requested("tls", BAD)
            pos += length
    except (IndexError, struct.error):
        return Requested("tls", BAD)
    if found is None:
        return Requested("tls", NONE)
    try:
        return _canonical("tls", found.decode("ascii"))
    except UnicodeDecodeError:
        return Requested("tls", BAD)


def _server_name(ext: bytes) -> Optional[bytes]:
    """The one host_name entry of a server_name extension (RFC 6066 3), or None if odd."""
    if len(ext) < 2 or struct.unpack_from("!H", ext, 0)[0] != len(ext) - 2:
        return None
    pos, names = 2, []
    while pos + 3 <= len(ext):
        kind, length = ext[pos], struct.unpack_from("!H", ext, pos + 1)[0]
        pos += 3
        if pos + length > len(ext):
            return None
        if kind == 0:
            names.append(ext[pos:pos + length])
        pos += length
    return names[0] if len(names) == 1 and pos == len(ext) else None
