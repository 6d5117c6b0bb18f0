"""NDJSON framing: golden lines and re-buffering across chunks."""

import pytest

from hutch.protocol.ndjson import NdjsonDecoder, encode_line


def test_encode_line_golden():
    assert encode_line({"type": "stdout", "text": "é\n"}) == '{"type":"stdout","text":"é\\n"}\n'.encode()


def test_decoder_across_every_split():
    stream = encode_line({"a": 1}) + b"\n" + encode_line({"b": [1, 2]}) + b'{"c":"tail"}'
    for size in (1, 2, 5, len(stream)):
        d = NdjsonDecoder()
        got = []
        for i in range(0, len(stream), size):
            got += d.feed(stream[i:i + size])
        assert got == [{"a": 1}, {"b": [1, 2]}]
        assert d.close() == [{"c": "tail"}]


def test_line_limit():
    with pytest.raises(ValueError):
        NdjsonDecoder(max_line=4).feed(b'{"long": 1')
