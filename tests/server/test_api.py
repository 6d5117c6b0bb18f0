"""The control plane and the data plane over HTTP, against a real server and real sandboxes."""

from __future__ import annotations

import json
import re
import struct
import time
import uuid

import httpx
import pytest


def _create(api, sandboxes, **body) -> dict:
    body.setdefault("templateID", "base")
    r = api.post("/v2/sandboxes", json=body)
    assert r.status_code == 201, r.text
    sbx = r.json()
    sandboxes.append(sbx["sandboxID"])
    return sbx


def _agent(server, sbx: dict, path: str, method: str = "GET", token: str | None = "same",
           **kw) -> httpx.Response:
    headers = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983"}
    if token == "same":
        token = sbx.get("envdAccessToken")
    if token:
        headers["X-Access-Token"] = token
    headers.update(kw.pop("headers", {}))
    return httpx.request(method, server.url + path, headers=headers, timeout=60, **kw)


def _envelope(msg: dict, flags: int = 0) -> bytes:
    data = json.dumps(msg).encode()
    return struct.pack(">BI", flags, len(data)) + data


def _run(server, sbx: dict, cmd: str) -> tuple[str, int]:
    """Run a command through the proxy with the Connect streaming protocol; (stdout, exit)."""
    body = _envelope({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}})
    r = _agent(server, sbx, "/process.Process/Start", "POST", content=body, headers={
        "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"})
    assert r.status_code == 200, r.text
    out, code, data = b"", None, r.content
    import base64
    while data:
        flags, n = struct.unpack(">BI", data[:5])
        msg, data = json.loads(data[5:5 + n]), data[5 + n:]
        if flags & 2:
            assert "error" not in msg, msg
            break
        ev = msg["event"]
        if "data" in ev and "stdout" in ev["data"]:
            out += base64.b64decode(ev["data"]["stdout"])
        if "end" in ev:
            code = ev["end"].get("exitCode", 0)
    return out.decode(), code


def test_health_needs_no_key_and_everything_else_does(server):
    assert httpx.get(server.url + "/health").status_code == 200
    for headers in ({}, {"X-API-KEY": "e2b_" + "0" * 40}):
        r = httpx.get(server.url + "/v2/sandboxes", headers=headers)
        assert r.status_code == 401
        assert r.json()["code"] == 401 and r.json()["message"]
        r = httpx.post(server.url + "/sandboxes", headers=headers, json={"templateID": "base"})
        assert r.status_code == 401


def test_errors_are_json(api):
    r = api.get("/no/such/path")
    assert r.status_code == 404 and r.json()["code"] == 404
    r = api.get("/sandboxes/doesnotexist0000000")
    assert r.status_code == 404 and "not found" in r.json()["message"]
    assert api.delete("/sandboxes/doesnotexist0000000").status_code == 404
    r = api.post("/sandboxes/doesnotexist0000000/pause")
    assert r.status_code == 501 and r.json()["code"] == 501
    r = api.post("/v2/sandboxes", content=b"{not json")
    assert r.status_code == 400 and r.json()["code"] == 400
    r = api.post("/v2/sandboxes", json={"templateID": "no-such-template"})
    assert r.status_code == 404 and "no-such-template" in r.json()["message"]
    r = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": 10**9})
    assert r.status_code == 400
    r = api.post("/v2/sandboxes", json={"templateID": "base", "envVars": {"A": 1}})
    assert r.status_code == 400 and "envVars" in r.json()["message"]


def test_a_cold_create_says_where_its_time_went(api, sandboxes):
    r = api.post("/v2/sandboxes", json={"templateID": "base"})
    assert r.status_code == 201, r.text
    sandboxes.append(r.json()["sandboxID"])
    steps = {}
    for part in r.headers["server-timing"].split(","):
        name, _, dur = part.strip().partition(";dur=")
        steps[name] = float(dur)
    # The runtime's own steps, nested in its total; the agent forked in or started inside.
    assert {"runtime_disk_copy", "runtime_disk_mount", "runtime_overlay", "runtime_network",
            "runtime_bundle", "runtime_oci_run"} <= set(steps)
    assert ("runtime_agent_fork" in steps) != ("runtime_limits" in steps)
    assert 0 < steps["runtime_oci_run"] < steps["runtime"] <= steps["total"]
    assert steps["runtime_bundle"] + steps["runtime_oci_run"] <= steps["runtime"]


def test_create_get_connect_timeout_kill(server, api, sandboxes):
    t0 = time.perf_counter()
    sbx = _create(api, sandboxes, metadata={"k": "v"}, envVars={"FOO": "bar"}, timeout=120)
    latency = time.perf_counter() - t0
    print(f"\ncreate through HTTP: {latency * 1e3:.1f} ms")
    sid = sbx["sandboxID"]
    assert re.fullmatch(r"[a-z0-9]{20}", sid)
    assert sbx["templateID"] == "base" and sbx["envdVersion"] and sbx["envdAccessToken"]
    assert {"clientID", "alias", "domain"} <= set(sbx)

    d = api.get(f"/sandboxes/{sid}").json()
    assert d["sandboxID"] == sid and d["state"] == "running" and d["metadata"] == {"k": "v"}
    assert d["cpuCount"] >= 1 and d["memoryMB"] > 0 and d["diskSizeMB"] > 0
    assert d["envdAccessToken"] == sbx["envdAccessToken"] and d["allowInternetAccess"] is True
    end = d["endAt"]

    for path in (f"/sandboxes/{sid}/connect", f"/v2/sandboxes/{sid}/connect"):
        r = api.post(path, json={"timeout": 10})
        assert r.status_code == 200 and r.json()["sandboxID"] == sid
        assert r.json()["envdAccessToken"] == sbx["envdAccessToken"]
    assert api.get(f"/sandboxes/{sid}").json()["endAt"] == end   # connect never shortens

    assert api.post(f"/sandboxes/{sid}/timeout", json={"timeout": 600}).status_code == 204
    assert api.get(f"/sandboxes/{sid}").json()["endAt"] > end

    m = api.get(f"/sandboxes/{sid}/metrics")
    assert m.status_code == 200 and m.json()[0]["memTotal"] > 0

    assert _run(server, sbx, "echo $FOO; whoami") == ("bar\nuser\n", 0)
    assert api.delete(f"/sandboxes/{sid}").status_code == 204
    assert api.get(f"/sandboxes/{sid}").status_code == 404
    assert api.delete(f"/sandboxes/{sid}").status_code == 404
    r = _agent(server, sbx, "/health")
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    assert r.json()["sandboxId"] == sid


def test_v1_create_without_secure_has_no_token(server, api, sandboxes):
    r = api.post("/sandboxes", json={"templateID": "base", "secure": False,
                                     "allow_internet_access": False})
    assert r.status_code == 201, r.text
    sbx = r.json()
    sandboxes.append(sbx["sandboxID"])
    assert sbx["envdAccessToken"] is None
    assert api.get(f"/sandboxes/{sbx['sandboxID']}").json()["allowInternetAccess"] is False
    assert _run(server, sbx, "echo open") == ("open\n", 0)


def test_data_plane_checks_the_access_token(server, api, sandboxes):
    sbx = _create(api, sandboxes)
    assert _agent(server, sbx, "/health", token=None).status_code == 204
    r = _agent(server, sbx, "/envs", token=None)
    assert r.status_code == 401 and r.json()["code"] == 401
    assert _agent(server, sbx, "/envs", token="wrong").status_code == 401
    assert _agent(server, sbx, "/envs").status_code == 200


def test_list_filters_and_pagination(api, sandboxes):
    tag = uuid.uuid4().hex
    ids = [_create(api, sandboxes, metadata={"tag": tag, "n": str(i)})["sandboxID"]
           for i in range(3)]
    meta = f"tag={tag}"
    r = api.get("/v2/sandboxes", params={"metadata": meta})
    assert [s["sandboxID"] for s in r.json()] == ids and "x-next-token" not in r.headers
    r = api.get("/v2/sandboxes", params={"metadata": f"tag={tag}&n=1"})
    assert [s["sandboxID"] for s in r.json()] == [ids[1]]
    assert api.get("/sandboxes", params={"metadata": meta}).json()[0]["state"] == "running"

    seen, token = [], None
    while True:
        params = {"metadata": meta, "limit": 2, "state": "running"}
        if token:
            params["nextToken"] = token
        r = api.get("/v2/sandboxes", params=params)
        assert r.status_code == 200
        seen += [s["sandboxID"] for s in r.json()]
        token = r.headers.get("x-next-token")
        if not token:
            break
    assert seen == ids
    assert api.get("/v2/sandboxes", params={"metadata": meta, "state": "paused"}).json() == []
    assert api.get("/v2/sandboxes", params={"state": "dead"}).status_code == 400

    api.delete(f"/sandboxes/{ids[0]}")
    r = api.get("/v2/sandboxes", params={"metadata": meta})
    assert [s["sandboxID"] for s in r.json()] == ids[1:]


def test_timeout_expiry_kills_the_sandbox(server, api, sandboxes):
    sbx = _create(api, sandboxes, timeout=2)
    deadline = time.monotonic() + 60
    while api.get(f"/sandboxes/{sbx['sandboxID']}").status_code == 200:
        assert time.monotonic() < deadline, "the sandbox outlived its timeout"
        time.sleep(0.2)
    r = _agent(server, sbx, "/health")
    assert r.status_code == 502 and "was not found" in r.json()["message"]


def test_streams_pass_through_unbuffered_both_ways(server, api, sandboxes):
    """A StreamInput envelope reaches the process before the request body ends, and the
    output comes back while the command still runs."""
    sbx = _create(api, sandboxes)
    headers = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "49983",
               "X-Access-Token": sbx["envdAccessToken"],
               "Content-Type": "application/connect+json", "Connect-Protocol-Version": "1"}
    import base64
    import threading

    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        start = _envelope({"process": {"cmd": "/bin/bash", "args": ["-c", "read x; echo got-$x; sleep 30"]},
                           "stdin": True})
        with c.stream("POST", "/process.Process/Start", content=start) as resp:
            assert resp.status_code == 200
            buf = b""
            chunks = resp.iter_bytes()
            pid = None
            got = threading.Event()
            while pid is None:
                buf += next(chunks)
                while len(buf) >= 5:
                    n = struct.unpack(">I", buf[1:5])[0]
                    if len(buf) < 5 + n:
                        break
                    msg, buf = json.loads(buf[5:5 + n]), buf[5 + n:]
                    pid = msg["event"].get("start", {}).get("pid", pid)

            def stream_input():
                yield _envelope({"start": {"process": {"pid": pid}}})
                yield _envelope({"data": {"input": {"stdin": base64.b64encode(b"hi\n").decode()}}})
                got.wait(30)      # keep the request body open until the output arrived
                yield _envelope({}, flags=2)

            box = {}
            t = threading.Thread(target=lambda: box.setdefault("r", c.post(
                "/process.Process/StreamInput", content=stream_input())))
            t.start()
            out = b""
            while b"got-hi" not in out:
                buf += next(chunks)
                while len(buf) >= 5:
                    n = struct.unpack(">I", buf[1:5])[0]
                    if len(buf) < 5 + n:
                        break
                    msg, buf = json.loads(buf[5:5 + n]), buf[5 + n:]
                    ev = msg.get("event", {})
                    if "data" in ev and "stdout" in ev["data"]:
                        out += base64.b64decode(ev["data"]["stdout"])
            got.set()
            t.join(60)
            assert box["r"].status_code == 200
        # The Start stream was left early: the proxy must stay usable for the sandbox.
        assert _run(server, sbx, "echo still") == ("still\n", 0)


def test_host_routing(server, api, sandboxes):
    from .conftest import DOMAIN
    sbx = _create(api, sandboxes)
    host = f"49983-{sbx['sandboxID']}.{DOMAIN}"
    r = httpx.get(server.url + "/health", headers={"Host": host})
    assert r.status_code == 204
    r = httpx.get(server.url + "/envs", headers={"Host": host,
                                                 "X-Access-Token": sbx["envdAccessToken"]})
    assert r.status_code == 200 and isinstance(r.json(), dict)
    r = httpx.get(server.url + "/health", headers={"Host": f"49983-nosuchsandbox.{DOMAIN}"})
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    # Any other host is the control plane.
    assert httpx.get(server.url + "/health", headers={"Host": "api." + DOMAIN}).json() == \
        {"status": "ok"}


def test_concurrent_creates(api, sandboxes):
    import concurrent.futures

    def one(_):
        r = api.post("/v2/sandboxes", json={"templateID": "base", "metadata": {"c": "1"}})
        return r.status_code, r.json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for status, body in results:
        assert status == 201, body
        sandboxes.append(body["sandboxID"])
    assert len({b["sandboxID"] for _, b in results}) == 6
    for _, body in results:
        assert api.get(f"/sandboxes/{body['sandboxID']}").json()["state"] == "running"


def _serve_file(server, sbx: dict, headers: dict, text: str) -> httpx.Response:
    """Serve ``text`` as /hello.txt on port 8000 inside, and fetch it through the server
    (retrying while the web server starts)."""
    from e2b import Sandbox
    inside = Sandbox.connect(sbx["sandboxID"], api_key=server.key, api_url=server.url,
                             sandbox_url=server.url)
    inside.files.write("/home/user/www/hello.txt", text)
    inside.commands.run("cd /home/user/www && python3 -m http.server 8000", background=True)
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(server.url + "/hello.txt", headers=headers)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def test_other_ports_are_forwarded_into_the_sandbox(server, api, sandboxes):
    sbx = _create(api, sandboxes)
    headers = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "8000",
               "E2B-Traffic-Access-Token": sbx["trafficAccessToken"]}
    r = httpx.get(server.url + "/", headers=headers)
    assert r.status_code == 502 and "port is not open" in r.json()["message"]
    # Ports are private by default: without the sandbox's traffic token, 401 before anything
    # reaches the sandbox.
    bare = {k: v for k, v in headers.items() if k != "E2B-Traffic-Access-Token"}
    r = httpx.get(server.url + "/", headers=bare)
    assert r.status_code == 401 and "trafficAccessToken" in r.json()["message"]

    r = _serve_file(server, sbx, headers, "served from inside")
    assert r.status_code == 200 and r.text == "served from inside"
    # The agent's access token is not what guards an exposed port (and is not passed on).
    r = httpx.get(f"{server.url}/hello.txt", headers={**headers, "X-Access-Token": "wrong"})
    assert r.status_code == 200
    # Public when asked for at create.
    public = _create(api, sandboxes, network={"allowPublicTraffic": True})
    assert api.get(f"/sandboxes/{public['sandboxID']}").json()["network"][
        "allowPublicTraffic"] is True
    r = httpx.get(server.url + "/", headers={"E2b-Sandbox-Id": public["sandboxID"],
                                             "E2b-Sandbox-Port": "8000"})
    assert r.status_code == 502 and "port is not open" in r.json()["message"]

    # A sandbox without a network: its ports are reached through its agent.
    none = _create(api, sandboxes, allow_internet_access=False)
    none_headers = {"E2b-Sandbox-Id": none["sandboxID"], "E2b-Sandbox-Port": "8000",
                    "E2B-Traffic-Access-Token": none["trafficAccessToken"]}
    r = httpx.get(server.url + "/", headers=none_headers)
    assert r.status_code == 502 and "port is not open" in r.json()["message"]
    r = _serve_file(server, none, none_headers, "no network, still served")
    assert r.status_code == 200 and r.text == "no network, still served"
    r = httpx.get(server.url + "/", headers={**none_headers, "E2b-Sandbox-Port": "99999"})
    assert r.status_code == 400


_TICKER = """
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"5\\r\\ntick\\n\\r\\n")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            open("/tmp/closed", "w").write("closed")
http.server.ThreadingHTTPServer(("0.0.0.0", 8001), H).serve_forever()
"""


def test_client_disconnect_closes_the_upstream_connection(server, api, sandboxes):
    """An endless response streams through, and leaving it is seen inside the sandbox."""
    from e2b import Sandbox
    sbx = _create(api, sandboxes)
    e2b = Sandbox.connect(sbx["sandboxID"], api_key=server.key, api_url=server.url,
                          sandbox_url=server.url)
    e2b.files.write("/tmp/ticker.py", _TICKER)
    e2b.commands.run("python3 /tmp/ticker.py", background=True)
    headers = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": "8001",
               "E2B-Traffic-Access-Token": sbx["trafficAccessToken"]}
    deadline = time.monotonic() + 30
    while True:
        try:
            with httpx.stream("GET", server.url + "/", headers=headers, timeout=30) as r:
                if r.status_code == 200:
                    got = b""
                    for piece in r.iter_raw():
                        got += piece
                        if got.count(b"tick") >= 3:
                            break
                    break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the ticker never answered"
        time.sleep(0.1)
    assert not e2b.files.exists("/tmp/closed")      # still streaming until we left
    deadline = time.monotonic() + 20
    while not e2b.files.exists("/tmp/closed"):
        assert time.monotonic() < deadline, "the upstream connection stayed open"
        time.sleep(0.1)


def test_a_sandbox_that_dies_by_itself_is_recorded_and_cleaned_up(server, api, sandboxes):
    import os
    import signal
    from .conftest import DATA_DIR
    sbx = _create(api, sandboxes)
    sid = sbx["sandboxID"]
    pid = int((DATA_DIR / "runtime" / "sandboxes" / sid / "init.pid").read_text())
    os.kill(pid, signal.SIGKILL)        # the sandbox's init, as an OOM kill would
    deadline = time.monotonic() + 30
    while True:
        r = _agent(server, sbx, "/envs")
        if r.status_code == 502 and "was not found" in r.json()["message"]:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert api.get(f"/sandboxes/{sid}").status_code == 404
    assert not (DATA_DIR / "runtime" / "sandboxes" / sid).exists()


def test_idempotency_key_makes_create_safe_to_retry(api, sandboxes):
    import concurrent.futures
    key = "retry-" + uuid.uuid4().hex
    body = {"templateID": "base", "metadata": {"idem": key}}

    def one(_):
        return api.post("/v2/sandboxes", json=body, headers={"Idempotency-Key": key})

    with concurrent.futures.ThreadPoolExecutor(3) as pool:     # retries racing the first
        results = list(pool.map(one, range(3)))
    assert all(r.status_code == 201 for r in results), [r.text for r in results]
    ids = {r.json()["sandboxID"] for r in results}
    assert len(ids) == 1
    sid = ids.pop()
    sandboxes.append(sid)
    again = one(0)
    assert again.status_code == 201 and again.json()["sandboxID"] == sid
    listed = api.get("/v2/sandboxes", params={"metadata": f"idem={key}"}).json()
    assert [s["sandboxID"] for s in listed] == [sid]
    assert api.delete(f"/sandboxes/{sid}").status_code == 204
    r = one(0)
    assert r.status_code == 409 and sid in r.json()["message"]


def test_resources_can_be_chosen_within_limits(server, api, sandboxes):
    sbx = _create(api, sandboxes, cpuCount=1, memoryMB=384, diskSizeMB=1536)
    d = api.get(f"/sandboxes/{sbx['sandboxID']}").json()
    assert (d["cpuCount"], d["memoryMB"], d["diskSizeMB"]) == (1, 384, 1536)
    m = api.get(f"/sandboxes/{sbx['sandboxID']}/metrics").json()[0]
    assert m["memTotal"] == 384 << 20
    assert 1000 << 20 < m["diskTotal"] <= 1536 << 20       # the filesystem's own overhead
    for bad in ({"memoryMB": 10 ** 7}, {"cpuCount": 0}, {"diskSizeMB": 1.5},
                {"cpuCount": 10 ** 4}, {"memoryMB": "1G"}):
        r = api.post("/v2/sandboxes", json={"templateID": "base", **bad})
        assert r.status_code == 400 and r.json()["code"] == 400, (bad, r.text)
