"""What a command's result keeps of its output: everything up to the cap, then a count."""

from __future__ import annotations

import pytest

from hutch.sdk._output import MARKER, OUTPUT_CAP, RetainedOutput


def test_output_under_the_cap_is_kept_whole():
    kept = RetainedOutput(OUTPUT_CAP)
    for chunk in ("a" * 1000, "b\n", ""):
        kept.add(chunk)
    assert kept.text() == "a" * 1000 + "b\n"


def test_output_past_the_cap_is_cut_and_counted():
    kept = RetainedOutput(5)
    for chunk in ("abc", "defg", "h"):
        kept.add(chunk)
    assert kept.text() == "abcde" + MARKER.format(3)
    assert kept.parts == ["abc", "de"]


def test_no_cap_and_a_bad_cap():
    kept = RetainedOutput(None)
    kept.add("x" * 100_000)
    assert kept.text() == "x" * 100_000
    with pytest.raises(ValueError):
        RetainedOutput(-1)
