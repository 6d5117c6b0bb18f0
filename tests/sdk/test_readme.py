"""The README's SDK example runs as printed, against a real server."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def sdk_example() -> str:
    section = README.read_text().split("## The SDK in 20 lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_sdk_example_runs(server_env, capsys):
    exec(compile(sdk_example(), str(README), "exec"), {})  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert "a,b\n1,2\n" in out
    assert "0 SHOUT\n" in out
    assert "'E2b-Sandbox-Port': '8000'" in out
