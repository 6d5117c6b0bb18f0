"""How a running kernel is brought to a changed sandbox environment (pure: the code sent)."""

from __future__ import annotations

from hutch.agent.interpreter.execution import env_changes


def test_equal_environments_need_nothing():
    assert env_changes("python", {"A": "1"}, {"A": "1"}) == ""


def test_python_sets_and_removes_in_place():
    code = env_changes("python", {"A": "1", "GONE": "x"}, {"A": "2", "NEW": "it's"})
    scope: dict = {}
    import os
    os.environ["GONE"] = "x"
    try:
        exec(code, scope)
        assert os.environ["A"] == "2" and os.environ["NEW"] == "it's"
        assert "GONE" not in os.environ
        assert not [n for n in scope if n.startswith("_hutch") or n == "_k"]
    finally:
        for k in ("A", "NEW", "GONE"):
            os.environ.pop(k, None)


def test_bash_and_javascript_snippets():
    bash = env_changes("bash", {"OLD": "1"}, {"Q": "a'b"})
    assert "export Q='a'\\''b'" in bash and "unset OLD" in bash
    js = env_changes("javascript", {}, {"Q": "v"})
    assert 'Object.assign(process.env, {"Q": "v"})' in js


def test_start_up_only_variables_and_unknown_languages_need_a_restart():
    for name in ("PYTHONPATH", "LD_PRELOAD", "OMP_NUM_THREADS", "MPLBACKEND"):
        assert env_changes("python", {}, {name: "x"}) is None
        assert env_changes("python", {name: "x"}, {}) is None
    assert env_changes("r", {}, {"A": "1"}) is None
