"""Fixtures: the real agent as a subprocess on the host, driven over real HTTP.

The agent runs on the system's own /usr/bin/python3 with only ``src`` on PYTHONPATH (as it
runs inside a sandbox: stdlib only), as root, on a free loopback port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import httpx
import pytest

from hutch.protocol.envelope import EnvelopeDecoder, encode_envelope

SRC = Path(__file__).resolve().parents[2] / "src"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """One agent subprocess; ``stop()`` ends it by its pid."""

    def __init__(self, *, port: Optional[int] = None, socket_path: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        read_end, write_end = os.pipe()
        args = [PYTHON, "-m", "hutch.agent", "--listen", f"127.0.0.1:{self.port}", "--ready-fd", str(write_end)]
        if socket_path:
            args += ["--socket", socket_path]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(SRC),
               **(env or {})}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, pass_fds=(write_end,))
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            line = ready.readline()
        self.ready_after = time.monotonic() - self.started
        if line != b"ready\n":
            self.proc.kill()
            raise RuntimeError(f"agent did not start (exit {self.proc.wait()})")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


class Client:
    """Thin Connect-JSON client over httpx, built on hutch.protocol's codecs."""

    def __init__(self, url: str, token: Optional[str] = None) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.token = token

    def headers(self, user: Optional[str] = None, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        h = {"Connect-Protocol-Version": "1"}
        if user:
            h["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        if self.token:
            h["X-Access-Token"] = self.token
        h.update(extra or {})
        return h

    def unary(self, method: str, msg: Dict[str, Any], user: Optional[str] = None, **extra) -> httpx.Response:
        h = self.headers(user, extra.get("headers"))
        h["Content-Type"] = "application/json"
        return self.http.post(f"/{method}", content=json.dumps(msg), headers=h)

    def ok(self, method: str, msg: Dict[str, Any], user: Optional[str] = None) -> Dict[str, Any]:
        r = self.unary(method, msg, user)
        assert r.status_code == 200, r.text
        return r.json()

    @contextlib.contextmanager
    def open_stream(self, method: str, msg: Dict[str, Any], user: Optional[str] = None,
                    headers: Optional[Dict[str, str]] = None) -> Iterator[Iterator[Any]]:
        """Yield an iterator of (end_stream, message) pairs as they arrive."""
        h = self.headers(user, headers)
        h["Content-Type"] = "application/connect+json"
        with self.http.stream("POST", f"/{method}", content=encode_envelope(msg), headers=h) as r:
            assert r.status_code == 200, r.read()

            def frames():
                decoder = EnvelopeDecoder()
                for chunk in r.iter_raw():
                    for frame in decoder.feed(chunk):
                        yield frame.end_stream, frame.json()
                decoder.close()

            yield frames()

    def stream(self, method: str, msg: Dict[str, Any], user: Optional[str] = None,
               headers: Optional[Dict[str, str]] = None) -> List[Any]:
        """All messages of a server stream; the last item is the end-stream JSON."""
        with self.open_stream(method, msg, user, headers) as frames:
            out = []
            for end, message in frames:
                out.append(message)
                if end:
                    break
            return out

    def close(self) -> None:
        self.http.close()


def run_cmd(client: Client, cmd: str, user: Optional[str] = None, login: bool = False, **kw) -> Dict[str, Any]:
    """Run ``bash -c cmd`` (``-l -c`` like commands.run when ``login``); return stdout, stderr,
    the end event and the raw events. Login shells are slow on some hosts, so tests opt in."""
    args = ["-l", "-c", cmd] if login else ["-c", cmd]
    msg: Dict[str, Any] = {"process": {"cmd": "/bin/bash", "args": args, **kw.pop("process", {})}}
    msg.update(kw.pop("msg", {}))
    events = client.stream("process.Process/Start", msg, user, kw.pop("headers", None))
    out = {"stdout": b"", "stderr": b"", "pty": b"", "end": None, "events": events, "error": None}
    for item in events[:-1]:
        ev = item["event"]
        if "data" in ev:
            for k, v in ev["data"].items():
                out[k] += base64.b64decode(v)
        if "end" in ev:
            out["end"] = ev["end"]
    out["error"] = events[-1].get("error")
    return out


@pytest.fixture(scope="session")
def agent() -> Iterator[AgentProcess]:
    proc = AgentProcess()
    yield proc
    proc.stop()


@pytest.fixture()
def client(agent: AgentProcess) -> Iterator[Client]:
    c = Client(agent.url)
    yield c
    c.close()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A scratch directory that the ``nobody`` user can also enter."""
    tmp_path.chmod(0o755)
    for parent in tmp_path.parents:
        if str(parent) in ("/", "/tmp"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return tmp_path
