"""The agent-socket HTTP client: framing both ways, streaming, reuse, and hostile answers.

The peer is a raw asyncio unix-socket server that records what arrives and answers with the
exact bytes each test gives, so framing edge cases (and a misbehaving agent) are exercised.
"""

from __future__ import annotations

import asyncio

import pytest

from hutch.server.upstream import AgentLink, UpstreamError


class Peer:
    def __init__(self, path, answers, close_after=False):
        self.path, self.answers, self.close_after = path, list(answers), close_after
        self.received: list[bytes] = []
        self.connections = 0
        self.first_piece = asyncio.Event()

    async def start(self):
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                if b"transfer-encoding: chunked" in head.lower():
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        if size:
                            body += (await reader.readexactly(size + 2))[:-2]
                            self.first_piece.set()
                        else:
                            await reader.readexactly(2)
                            break
                elif b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                self.received.append(head + body)
                answer = self.answers.pop(0)
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


async def _collect(resp):
    try:
        return resp.status, await resp.read()
    finally:
        resp.close()


async def test_content_length_chunked_and_reuse(tmp_path):
    peer = Peer(tmp_path / "s", [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        resp = await link.request("GET", b"/a", [(b"host", b"agent")])
        assert (b"x-a", b"1") in resp.headers
        assert await _collect(resp) == (200, b"hello")
        resp = await link.request("POST", b"/b?q=1", [(b"host", b"agent"),
                                                      (b"content-length", b"3")], b"xyz")
        assert await _collect(resp) == (200, b"abcde")
        assert await _collect(await link.request("GET", b"/health", [(b"host", b"a")])) == \
            (204, b"")
        # Kept alive after sized and streamed (chunked) answers alike: one connection.
        assert peer.connections == 1
        assert peer.received[1].startswith(b"POST /b?q=1 HTTP/1.1\r\n")
        assert peer.received[1].endswith(b"\r\n\r\nxyz")
    finally:
        await link.aclose()
        await peer.stop()


async def test_streamed_request_body_is_sent_piece_by_piece(tmp_path):
    peer = Peer(tmp_path / "s", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    release = asyncio.Event()

    async def body():
        yield b"first"
        await release.wait()        # the rest only comes once the first piece arrived
        yield b"second"

    try:
        task = asyncio.create_task(link.request("POST", b"/s", [(b"host", b"a")], body(),
                                                chunked=True))
        await asyncio.wait_for(peer.first_piece.wait(), 10)
        release.set()
        assert await _collect(await task) == (200, b"ok")
        assert peer.received[0].endswith(b"firstsecond")
    finally:
        await link.aclose()
        await peer.stop()


async def test_response_body_streams_before_it_ends(tmp_path):
    more = asyncio.Event()

    async def slow(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nping\r\n")
        await writer.drain()
        await more.wait()
        writer.write(b"4\r\npong\r\n0\r\n\r\n")
        await writer.drain()

    peer = Peer(tmp_path / "s", [slow])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        resp = await link.request("GET", b"/", [(b"host", b"a")])
        it = resp.aiter()
        assert await asyncio.wait_for(it.__anext__(), 10) == b"ping"
        more.set()
        assert [c async for c in it] == [b"pong"]
        resp.close()
    finally:
        await link.aclose()
        await peer.stop()


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-nope\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
])
async def test_hostile_heads_are_errors(tmp_path, answer):
    peer = Peer(tmp_path / "s", [answer])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        with pytest.raises(UpstreamError):
            await link.request("GET", b"/", [(b"host", b"a")])
    finally:
        await link.aclose()
        await peer.stop()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
])
async def test_hostile_bodies_are_errors(tmp_path, answer):
    peer = Peer(tmp_path / "s", [answer], close_after=True)
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        await _body_fails(link)
    finally:
        await link.aclose()
        await peer.stop()


async def _body_fails(link) -> None:
    """A GET whose answer's body cannot be read whole: an UpstreamError, and the answer
    released."""
    resp = await link.request("GET", b"/", [(b"host", b"a")])
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(resp.read(), 10)
    resp.close()


async def test_missing_socket_and_closed_link(tmp_path):
    link = AgentLink(tmp_path / "nothing")
    with pytest.raises(UpstreamError, match="cannot connect"):
        await link.request("GET", b"/", [(b"host", b"a")])
    assert await link.health(timeout=1) is False
    await link.aclose()
    with pytest.raises(UpstreamError):
        await link.request("GET", b"/", [(b"host", b"a")])


async def test_a_big_sized_body_comes_whole_in_any_pieces_and_the_connection_goes_on(tmp_path):
    """A body over a MiB is taken past the stream reader while it comes in; it must arrive
    byte-exact however the agent's writes fall, and the connection serve the next request."""
    import os

    blob = os.urandom(5 * (1 << 20) + 333)

    async def trickled(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob) + blob[:7])
        await writer.drain()
        at = 7
        for size in (1, 65536, 300_000, 1 << 20, 17, 3 << 20):
            writer.write(blob[at:at + size])
            await writer.drain()
            at += size
            await asyncio.sleep(0.01)
        writer.write(blob[at:])
        await writer.drain()

    peer = Peer(tmp_path / "s", [trickled, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext!",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(blob)
                                 + blob + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        assert await _collect(await link.request("GET", b"/f", [(b"host", b"a")])) == (200, blob)
        assert await _collect(await link.request("GET", b"/g", [(b"host", b"a")])) == \
            (200, b"next!")
        # An answer and the next one in one write: the second is the stream reader's again.
        resp = await link.request("GET", b"/h", [(b"host", b"a")])
        assert await _collect(resp) == (200, blob)
        assert peer.connections == 1
    finally:
        await link.aclose()
        await peer.stop()


async def test_a_big_body_cut_short_is_an_error_and_the_connection_is_dropped(tmp_path):
    async def cut(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (4 << 20)
                     + bytes(3 << 20))
        await writer.drain()

    peer = Peer(tmp_path / "s", [cut, b"HTTP/1.1 204 No Content\r\n\r\n"], close_after=True)
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        await _body_fails(link)
        # Abandoned half-way: the connection is not reused for the next request.
        resp = await link.request("GET", b"/health", [(b"host", b"a")])
        assert await _collect(resp) == (204, b"")
        assert peer.connections == 2
    finally:
        await link.aclose()
        await peer.stop()


async def test_a_request_leaves_in_one_write_with_its_first_body_piece(tmp_path, monkeypatch):
    # Each write wakes the agent: the head goes with the body's first piece (a relayed
    # request's body arrives as pieces), a small bytes body with the head, and a streamed
    # body's later pieces each in a write of their own as they come.
    writes: list[bytes] = []
    real = asyncio.StreamWriter.write
    monkeypatch.setattr(asyncio.StreamWriter, "write",
                        lambda self, data: (writes.append(bytes(data)), real(self, data))[1])
    ok = b"HTTP/1.1 204 No Content\r\n\r\n"
    peer = Peer(tmp_path / "s", [ok, ok, ok])
    await peer.start()
    link = AgentLink(tmp_path / "s")

    async def pieces(*parts):
        for part in parts:
            yield part

    try:
        await _collect(await link.request("POST", b"/one", [(b"content-length", b"5")],
                                          pieces(b"hello")))
        await _collect(await link.request("POST", b"/two", [(b"content-length", b"3")], b"abc"))
        await _collect(await link.request("POST", b"/three", [], pieces(b"ab", b"", b"cd"),
                                          chunked=True))
    finally:
        await peer.stop()
    mine = [w for w in writes if not w.startswith(b"HTTP/1.1")]   # the peer's answers aside
    assert mine[0].startswith(b"POST /one HTTP/1.1\r\n") and mine[0].endswith(b"\r\n\r\nhello")
    assert mine[1].startswith(b"POST /two HTTP/1.1\r\n") and mine[1].endswith(b"\r\n\r\nabc")
    assert mine[2].startswith(b"POST /three ") and mine[2].endswith(b"\r\n\r\n2\r\nab\r\n")
    assert mine[3:] == [b"2\r\ncd\r\n", b"0\r\n\r\n"]
    assert [r.split(b" ")[1] for r in peer.received] == [b"/one", b"/two", b"/three"]
