"""Agent lifetime: the unix socket (0600, ready when it appears), SIGTERM, stdlib-only imports."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time

import httpx

from .conftest import PYTHON, SRC, AgentProcess, Client


def test_unix_socket_mode_and_health(tmp_path):
    path = tmp_path / "agent.sock"
    agent = AgentProcess(socket_path=str(path))
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://agent") as http:
            assert http.get("/health").status_code == 204
            r = http.post("/process.Process/List", content=b"{}", headers={"Content-Type": "application/json"})
            assert r.json() == {"processes": []}
    finally:
        assert agent.stop() == 0
    assert not path.exists()


def test_socket_is_connectable_as_soon_as_it_appears(tmp_path):
    path = tmp_path / "a.sock"
    proc = subprocess.Popen([PYTHON, "-m", "hutch.agent", "--socket", str(path)], env={"PYTHONPATH": str(SRC)})
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))  # never ECONNREFUSED: bound and listening before the rename
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 204")
    finally:
        proc.terminate()
        proc.wait(10)


def test_sigterm_ends_quickly_and_kills_children(workdir):
    agent = AgentProcess()
    client = Client(agent.url)
    with client.open_stream("process.Process/Start", {"process": {"cmd": "/bin/sleep", "args": ["60"]}}) as frames:
        pid = next(frames)[1]["event"]["start"]["pid"]
        t0 = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - t0 < 5
    client.close()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_agent_imports_nothing_outside_the_stdlib():
    code = ("import sys, hutch.agent.server, hutch.agent.__main__;"
            "print('\\n'.join(m for m in sys.modules))")
    out = subprocess.run([PYTHON, "-I", "-c", f"import sys; sys.path.insert(0, {str(SRC)!r}); {code}"],
                         capture_output=True, text=True, check=True).stdout.split()
    third_party = {m.split(".")[0] for m in out} & {"httpx", "starlette", "uvicorn", "click", "h11", "anyio"}
    assert not third_party
    hutch_mods = {m for m in out if m.startswith("hutch")}
    assert all(m.startswith(("hutch.agent", "hutch.protocol")) or m in ("hutch", "hutch.errors") for m in hutch_mods)
