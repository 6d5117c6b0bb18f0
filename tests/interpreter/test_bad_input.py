"""What the code interpreter does with bad or hostile requests: clear errors, bounded output."""

from __future__ import annotations

import httpx
import pytest

from hutch import Sandbox, errors


def test_unknown_language_and_context_are_clear_errors(ci):
    with pytest.raises(errors.InvalidArgumentError, match="unknown language 'cobol'"):
        ci.run_code("x", language="cobol")
    with pytest.raises(errors.NotFoundError, match="context 'nope' not found"):
        ci.run_code("x", context="nope")
    with pytest.raises(errors.InvalidArgumentError):
        ci.run_code("x", language="python", context="nope")
    with pytest.raises(errors.InvalidArgumentError, match="cwd"):
        ci.create_code_context(cwd="relative/dir")


def test_raw_requests_get_json_errors(ci, hutch_server):
    headers = {"E2b-Sandbox-Id": ci.sandbox_id, "E2b-Sandbox-Port": "49999",
               "X-Access-Token": ci._code.headers.get("X-Access-Token", "")}
    with httpx.Client(base_url=hutch_server.url, headers=headers, timeout=30) as http:
        r = http.post("/execute", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["message"]
        r = http.post("/execute", json={"code": 5})
        assert r.status_code == 400 and r.json()["message"] == "code must be a string"
        r = http.post("/execute", json={"code": "1", "env_vars": {"BAD NAME": "x"}})
        assert r.status_code == 400 and "BAD NAME" in r.json()["message"]
        r = http.post("/execute", json={"code": "1", "timeout": "soon"})
        assert r.status_code == 400
        assert http.get("/nowhere").status_code == 404
        r = http.post("/warm", json={"imports": ["os"], "zygote": "yes"})
        assert r.status_code == 400 and r.json()["message"] == "zygote must be true or false"
        r = http.post("/warm", json={"imports": ["not a module"]})
        assert r.status_code == 400
        r = http.post("/execute", json={"code": "1"}, headers={"X-Access-Token": "wrong"})
        assert r.status_code == 401


def test_a_flood_of_output_is_truncated_with_a_marker(ci):
    run = ci.run_code("import sys\nchunk = 'x' * 65535 + '\\n'\n"
                      "for _ in range(400): sys.stdout.write(chunk)\n"
                      "sys.stdout.flush()\n'finished'", timeout=120)
    printed = sum(len(s) for s in run.logs.stdout)
    assert 15 * 2**20 < printed <= 16 * 2**20 + 2**20
    assert any("output truncated" in s for s in run.logs.stderr)
    assert run.text == "'finished'"                 # the cell itself ran to its end


def test_a_sandbox_without_an_interpreter_says_so(hutch_server):
    with Sandbox.create(url=hutch_server.url, api_key=hutch_server.api_key) as sbx:
        try:
            with pytest.raises(errors.SandboxError, match="no code interpreter"):
                sbx.run_code("1")
        finally:
            sbx.kill()
