"""The agent's URL decoding agrees with urllib.parse on the inputs clients send."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, unquote_plus, urlencode

import pytest

from hutch.agent.http import parse_query, unquote


@pytest.mark.parametrize("text", [
    "/home/user/file.txt", "/tmp/with space/ünïcode 文件.txt", "a+b=c&d", "100%", "%zz%4", "%", "x%2",
    "/a/%2F/b", "emoji 😀", "", "% 1", "%+1", "%_1",
])
def test_unquote_matches_urllib(text):
    assert unquote(quote(text, safe="/")) == text
    assert unquote(quote(text, safe="")) == text
    encoded = urlencode({"path": text})
    assert parse_query(encoded) == parse_qs(encoded, keep_blank_values=True)
    assert unquote(text, plus=True) == unquote_plus(text)


def test_parse_query_repeats_and_blanks():
    assert parse_query("a=1&b=&a=2&&c") == {"a": ["1", "2"], "b": [""], "c": [""]}
