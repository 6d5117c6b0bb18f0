"""hutch.server.startup.run: a command through the agent's process service, to its end."""

from __future__ import annotations

from hutch.protocol import envd
from hutch.protocol.envelope import encode_end_stream, encode_envelope
from hutch.server import startup
from hutch.server.upstream import AgentLink

from tests.server.test_upstream import Peer


def _chunked(*pieces: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n")


async def test_exit_status_output_and_the_connection_kept(tmp_path):
    """Read to the stream's end, the exchange leaves the agent connection open for the next
    request (a warm-pool sandbox's claim then sends /init without connecting)."""
    stream = _chunked(encode_envelope(envd.start_event(7)),
                      encode_envelope(envd.data_event(stdout=b"hi\n")),
                      encode_envelope(envd.end_event(3, exited=True, status="exit status 3")),
                      encode_end_stream())
    peer = Peer(tmp_path / "s", [stream, b"HTTP/1.1 204 No Content\r\n\r\n"])
    await peer.start()
    link = AgentLink(tmp_path / "s")
    try:
        code, out, err = await startup.run(link, "/bin/bash", ["-l", "-c", "true"], user="user")
        assert (code, out, err) == (3, b"hi\n", b"")
        resp = await link.request("GET", b"/health", [(b"host", b"agent")])
        resp.close()
        assert resp.status == 204
        assert peer.connections == 1
    finally:
        await link.aclose()
        await peer.stop()
