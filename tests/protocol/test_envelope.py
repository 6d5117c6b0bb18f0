"""Connect envelopes: golden bytes, incremental decoding across arbitrary chunk boundaries."""

from __future__ import annotations

import pytest

from hutch.protocol.envelope import (
    FLAG_END_STREAM,
    Envelope,
    EnvelopeDecoder,
    EnvelopeError,
    encode_end_stream,
    encode_envelope,
    end_stream_message,
)


def test_golden_message_envelope():
    assert encode_envelope({"event": {"start": {"pid": 42}}}) == b'\x00\x00\x00\x00\x1e{"event":{"start":{"pid":42}}}'
    assert encode_envelope(b"{}") == b"\x00\x00\x00\x00\x02{}"
    assert encode_envelope({}) == b"\x00\x00\x00\x00\x02{}"


def test_golden_end_stream():
    assert encode_end_stream() == b"\x02\x00\x00\x00\x02{}"
    err = encode_end_stream({"code": "deadline_exceeded", "message": "late"})
    assert err == b'\x02\x00\x00\x00\x37{"error":{"code":"deadline_exceeded","message":"late"}}'
    assert end_stream_message(None, {"k": ["v"]}) == {"metadata": {"k": ["v"]}}


def test_unicode_is_escaped_and_roundtrips():
    frame = encode_envelope({"s": "é"})
    assert frame == b'\x00\x00\x00\x00\x0e{"s":"\\u00e9"}'
    assert EnvelopeDecoder().feed(frame)[0].json() == {"s": "é"}
    raw = '{"s":"é"}'.encode()  # peers may send raw UTF-8: length counts bytes
    assert EnvelopeDecoder().feed(encode_envelope(raw))[0].json() == {"s": "é"}


def test_decoder_rebuffers_across_every_split():
    stream = (encode_envelope({"a": 1}) + encode_envelope({"b": "x" * 300})
              + encode_envelope(b"") + encode_end_stream())
    expected = [Envelope(0, b'{"a":1}'), Envelope(0, b'{"b":"' + b"x" * 300 + b'"}'), Envelope(0, b""),
                Envelope(FLAG_END_STREAM, b"{}")]
    for size in (1, 2, 3, 5, 7, 64, len(stream)):
        d = EnvelopeDecoder()
        got = []
        for i in range(0, len(stream), size):
            got += d.feed(stream[i:i + size])
        assert got == expected
        assert d.pending == 0
        d.close()
    assert expected[-1].end_stream and not expected[0].end_stream
    assert expected[2].json() == {}


def test_decoder_errors():
    d = EnvelopeDecoder(max_message=10)
    with pytest.raises(EnvelopeError):
        d.feed(b"\x00\x00\x00\x00\x0b" + b"x" * 11)
    d = EnvelopeDecoder()
    d.feed(b"\x00\x00\x00")
    with pytest.raises(EnvelopeError):
        d.close()


def test_connectrpc_client_reads_our_stream():
    """The SDK's Connect client decodes our frames and raises our end-stream error."""
    reader_mod = pytest.importorskip("connectrpc._protocol_connect")
    from connectrpc._compression import IdentityCompression
    from connectrpc.errors import ConnectError
    from e2b.envd.client_shared import _ProtoJSONCodec
    from e2b.envd.process import process_pb

    from hutch.protocol import envd

    stream = (encode_envelope(envd.start_event(5)) + encode_envelope(envd.data_event(stdout=b"x"))
              + encode_end_stream({"code": "deadline_exceeded", "message": "late"}))
    reader = reader_mod.ConnectEnvelopeReader(process_pb.StartResponse, _ProtoJSONCodec(), IdentityCompression(), None)
    got = []
    with pytest.raises(ConnectError) as info:
        for i in range(0, len(stream), 3):
            got += list(reader.feed(stream[i:i + 3]))
    assert got[0].event.event.field == "start" and got[0].event.event.value.pid == 5
    data = got[1].event.event.value.output
    assert (data.field, data.value) == ("stdout", b"x")
    assert info.value.code.name.lower() == "deadline_exceeded"
