"""The agent's streaming multipart reader: parts come out byte-exact however the body is cut
into reads, with content that looks like a boundary anywhere, including across reads."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from hutch.agent.http import BadRequest
from hutch.agent.multipart import MultipartReader

BOUNDARY = "----hutchBoundary7MA4YWxkTrZu0gW"


class FakeBody:
    """A request body that hands out ``data`` in reads of the given sizes (cycled)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.at, self.n = data, sizes, 0, 0

    async def read(self, max_bytes: int = 1024 * 1024) -> bytes:
        size = min(self.sizes[self.n % len(self.sizes)], max_bytes)
        self.n += 1
        piece = self.data[self.at:self.at + size]
        self.at += len(piece)
        return piece


def encode(parts: list[tuple[str, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b"preamble to ignore\r\n"
    for name, content in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        out += content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def parse(body: bytes, sizes: list[int], boundary: str = BOUNDARY) -> list[tuple[str, bytes]]:
    async def run():
        out = []
        reader = MultipartReader(FakeBody(body, sizes), boundary)
        async for headers, chunks in reader.parts():
            name = headers["content-disposition"].split('filename="')[1].rstrip('"')
            pieces = [bytes(c) async for c in chunks]
            assert all(pieces), "no empty pieces"
            out.append((name, b"".join(pieces)))
        return out

    return asyncio.run(run())


#: Content that is almost a delimiter, in every way that matters to a scanner.
TRICKY = [
    b"",
    b"\r\n",
    b"\r\n--",
    b"--" + BOUNDARY.encode(),                       # a boundary without its CRLF
    b"\r\n--" + BOUNDARY.encode()[:-1],              # a delimiter one byte short
    b"\r\n-" + BOUNDARY.encode(),
    b"\r\r\n--" + BOUNDARY.encode()[:5] + b"\r\n--",
    (b"\r\n--" + BOUNDARY.encode()[:-3]) * 1000,
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 38, 39, 40, 41, 4096, 1 << 20])
def test_tricky_content_every_read_size(size):
    parts = [(f"f{i}", blob) for i, blob in enumerate(TRICKY)]
    assert parse(encode(parts), [size]) == parts


def test_large_parts_with_random_reads_are_byte_exact():
    rng = random.Random(7)
    near = b"\r\n--" + BOUNDARY.encode()[:-1] + b"."   # never completed by chance
    big = bytearray(os.urandom(3 << 20))
    for _ in range(200):           # plant near-delimiters all over, some across read edges
        at = rng.randrange(len(big) - len(near))
        big[at:at + len(near)] = near
    parts = [("a", bytes(big)), ("b", os.urandom(100_000)), ("c", b"tail")]
    body = encode(parts)
    sizes = [rng.choice([1, 17, 39, 40, 41, 1000, 65536, 262144, 1 << 20]) for _ in range(500)]
    assert parse(body, sizes) == parts


def test_a_delimiter_split_at_every_offset_across_two_reads():
    parts = [("x", b"0123456789" * 10), ("y", b"z")]
    body = encode(parts)
    first = body.index(b"\r\n--" + BOUNDARY.encode(), 10)
    for cut in range(first - 2, first + len(BOUNDARY) + 8):
        assert parse(body, [cut, len(body)]) == parts, cut


def test_a_part_without_its_closing_boundary_is_refused():
    body = encode([("a", b"data")])[: -len(BOUNDARY) - 10]
    with pytest.raises(BadRequest):
        parse(body, [5])
