"""Fixtures shared by the whole suite.

The end-to-end tests talk to a real `hutch serve` subprocess, started once per session with
its own instance name, subnet and data dir so it never collides with a server an operator
runs on the same machine (or with another test run). Override with HUTCH_TEST_INSTANCE,
HUTCH_TEST_SUBNET, HUTCH_TEST_DATA_DIR and HUTCH_TEST_TEMPLATES_DIR.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TEST_INSTANCE = os.environ.get("HUTCH_TEST_INSTANCE", "hutcht")
TEST_SUBNET = os.environ.get("HUTCH_TEST_SUBNET", "10.178.0.0/16")
TEST_DATA_DIR = Path(os.environ.get("HUTCH_TEST_DATA_DIR", "/var/lib/hutch-test"))
TEST_TEMPLATES_DIR = Path(os.environ.get("HUTCH_TEST_TEMPLATES_DIR", str(TEST_DATA_DIR / "templates")))
# The first start builds the base template (a Debian bootstrap): minutes on a fresh machine.
STARTUP_TIMEOUT = float(os.environ.get("HUTCH_TEST_STARTUP_TIMEOUT", "1500"))


@dataclass
class Server:
    url: str
    api_key: str
    data_dir: Path
    instance: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, *, method: str = "GET", key: str | None = None, timeout: float = 5):
    req = urllib.request.Request(url, method=method)
    if key:
        req.add_header("X-API-KEY", key)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
        return resp.status, (json.loads(body) if body else None)


def _server_env(data_dir: Path, port: int, instance: str | None = None,
                subnet: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HUTCH_DATA_DIR=str(data_dir),
        HUTCH_HOST="127.0.0.1",
        HUTCH_PORT=str(port),
        HUTCH_INSTANCE=instance or TEST_INSTANCE,
        HUTCH_SUBNET=subnet or TEST_SUBNET,
        HUTCH_TEMPLATES_DIR=str(TEST_TEMPLATES_DIR),
        # Host routing (<port>-<id>.<domain>) is tested through this name; no DNS is needed
        # because the tests send the Host header themselves.
        HUTCH_DOMAIN="hutch.test",
        # A template whose ready command never succeeds fails its create this much later.
        HUTCH_TEMPLATE_READY_TIMEOUT="15",
        # A client trickling a request's head is disconnected this much later.
        HUTCH_HTTP_HEAD_TIMEOUT="5",
        # The tests' own registry listens on loopback, over plain HTTP.
        HUTCH_INSECURE_REGISTRIES="127.0.0.1",
    )
    return env


def start_server(data_dir: Path = TEST_DATA_DIR, log_name: str = "server.log", *,
                 extra_env: dict[str, str] | None = None, instance: str | None = None,
                 subnet: str | None = None) -> Server:
    """Start `python -m hutch serve` and wait until it answers /health.

    ``instance`` and ``subnet`` give a server its own host objects, for one that must not
    meet the session's server; ``extra_env`` adds settings."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir / log_name
    env = {**_server_env(data_dir, port, instance, subnet), **(extra_env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hutch", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(url=url, api_key="", data_dir=data_dir, instance=instance or TEST_INSTANCE,
                    process=proc, log=log)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"hutch serve exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            status, _ = _request(url + "/health", timeout=2)
            if status == 200:
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise RuntimeError(f"hutch serve did not become healthy:\n{server.log_tail()}")
        time.sleep(0.1)
    server.api_key = (data_dir / "admin.key").read_text().strip()
    server.env = {
        "E2B_API_URL": url,
        "E2B_SANDBOX_URL": url,
        "E2B_API_KEY": server.api_key,
        "HUTCH_URL": url,
        "HUTCH_API_KEY": server.api_key,
    }
    return server


def kill_all_sandboxes(server: Server) -> None:
    try:
        _, listed = _request(server.url + "/sandboxes", key=server.api_key)
        for sbx in listed or []:
            try:
                _request(f"{server.url}/sandboxes/{sbx['sandboxID']}", method="DELETE",
                         key=server.api_key, timeout=30)
            except urllib.error.HTTPError:
                pass
    except (urllib.error.URLError, OSError):
        pass


def stop_server(server: Server) -> None:
    """Stop the server we started (by PID). Sandboxes survive a server stop by design."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def restarted_server(session_server: Server, extra_env: dict[str, str]):
    """The session's server restarted with ``extra_env`` for the block, then restarted as it
    was (the session's fixtures follow the new process)."""
    stop_server(session_server)
    server = start_server(extra_env=extra_env)
    try:
        yield server
    finally:
        stop_server(server)
        session_server.__dict__.update(start_server().__dict__)


def teardown_instance(data_dir: Path = TEST_DATA_DIR, instance: str | None = None,
                      subnet: str | None = None) -> None:
    """Remove every host object of the test instance: sandboxes, bridge, nft table."""
    code = (
        "import asyncio, sys; from pathlib import Path; from hutch.server.config import Config; "
        "from hutch.server.app import build_runtime; "
        "asyncio.run(build_runtime(Config.from_env()).teardown())"
    )
    env = _server_env(data_dir, 0, instance, subnet)
    subprocess.run([sys.executable, "-c", code], env=env, check=False, timeout=120)


@pytest.fixture(scope="session")
def hutch_server():
    """A real hutch server for the whole session (built templates are reused across runs)."""
    server = start_server()
    try:
        yield server
    finally:
        kill_all_sandboxes(server)
        stop_server(server)
        teardown_instance()


@pytest.fixture(scope="session")
def code_interpreter(hutch_server):
    """The session's server, with the code-interpreter template built (once; about two
    minutes on a fresh machine). Built here rather than by the first create, whose client
    would give up waiting."""
    import asyncio

    from hutch.templates import TemplateStore, TerminalProgress

    store = TemplateStore(TEST_TEMPLATES_DIR)
    asyncio.run(store.ensure("code-interpreter", TerminalProgress()))
    return hutch_server


@pytest.fixture
def server_env(hutch_server, monkeypatch):
    """Point the hutch SDK and the official e2b SDK at the test server."""
    for k, v in hutch_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return hutch_server.env
