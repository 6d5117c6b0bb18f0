"""Bad input gets a clear JSON error and loses nothing; hostile output cannot hurt the server."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from hutch.protocol import EnvelopeDecoder, encode_envelope


@pytest.fixture
def api(hutch_server):
    with httpx.Client(base_url=hutch_server.url, headers={"X-API-KEY": hutch_server.api_key},
                      timeout=120) as client:
        yield client


@pytest.fixture
def sandbox(api):
    r = api.post("/sandboxes", json={"templateID": "base"})
    assert r.status_code == 201, r.text
    sbx = r.json()
    yield sbx
    api.delete(f"/sandboxes/{sbx['sandboxID']}")


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == status and body["message"]
    return body["message"]


def test_unknown_template_names_the_ones_that_exist(api):
    message = _error(api.post("/sandboxes", json={"templateID": "no-such-template"}), 404)
    assert "no-such-template" in message and "base" in message


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"templateID": 7}', b'{"timeout": "soon"}',
                                  b'{"metadata": "x"}', b'{"envVars": {"A": 1}}'])
def test_malformed_create_bodies_are_400(api, body):
    _error(api.post("/sandboxes", content=body, headers={"Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("sandbox_id", ["UPPER", "with-dash", "a" * 200, "..", "x%00y"])
def test_malformed_ids_are_rejected_cleanly(api, sandbox_id):
    r = api.get(f"/sandboxes/{sandbox_id}")
    assert r.status_code in (400, 404), r.text
    assert r.json()["message"]


def test_unknown_paths_and_missing_keys_answer_json(hutch_server, api):
    _error(api.get("/no/such/path"), 404)
    _error(httpx.get(hutch_server.url + "/sandboxes", timeout=30), 401)
    _error(httpx.get(hutch_server.url + "/sandboxes", headers={"X-API-KEY": "e2b_" + "0" * 40},
                     timeout=30), 401)


def _run(hutch_server, sbx: dict, cmd: str, sink) -> dict:
    """Start a command through the data plane and feed every stdout chunk (bytes) to sink."""
    headers = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
               "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    if sbx.get("envdAccessToken"):
        headers["X-Access-Token"] = sbx["envdAccessToken"]
    body = encode_envelope({"process": {"cmd": "/bin/bash", "args": ["-c", cmd]}})
    end: dict = {}
    with httpx.stream("POST", hutch_server.url + "/process.Process/Start", content=body,
                      headers=headers, timeout=300) as r:
        assert r.status_code == 200
        decoder = EnvelopeDecoder()
        for chunk in r.iter_raw():
            for env in decoder.feed(chunk):
                event = env.json().get("event", {})
                if "data" in event and "stdout" in event["data"]:
                    sink(base64.b64decode(event["data"]["stdout"]))
                if "end" in event:
                    end = event["end"]
    return end


def test_invalid_utf8_output_is_preserved_byte_for_byte(hutch_server, sandbox):
    raw = bytes(range(256)) + b"\xff\xfe\xc3(\xe2\x82"
    got = bytearray()
    end = _run(hutch_server, sandbox,
               f"python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(\"{raw.hex()}\"))'",
               got.extend)
    assert bytes(got) == raw
    assert end.get("exitCode", 0) == 0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_a_gigabyte_without_newlines_streams_with_bounded_server_memory(hutch_server, sandbox):
    before = _rss_mib(hutch_server.process.pid)
    total = 0
    peak = before

    def sink(chunk: bytes) -> None:
        nonlocal total, peak
        total += len(chunk)
        if total % (64 << 20) < len(chunk):
            peak = max(peak, _rss_mib(hutch_server.process.pid))

    end = _run(hutch_server, sandbox, "head -c 1073741824 /dev/zero", sink)
    assert total == 1 << 30
    assert end.get("exitCode", 0) == 0
    # The proxy relays chunks; it must never hold the stream. 200 MiB of slack for allocator noise.
    assert peak - before < 200, (before, peak)
