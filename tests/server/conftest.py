"""A real `python -m hutch serve` for the server tests, under this suite's own identity.

Instance ``hutchs``, subnet 10.184.0.0/16 and data dir /var/lib/hutch-test-server keep it apart
from every other server on the machine; templates come from the shared test templates root so
the `base` build is reused. The session ends by killing what is left and tearing the instance's
host objects down through the runtime.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

INSTANCE = "hutchs"
SUBNET = "10.184.0.0/16"
DATA_DIR = Path("/var/lib/hutch-test-server")
TEMPLATES_DIR = Path(os.environ.get("HUTCH_TEST_TEMPLATES_DIR", "/var/lib/hutch-test/templates"))
DOMAIN = "sbx.hutch.test"   # host routing: <port>-<id>.<domain>, sent as a Host header
STARTUP_TIMEOUT = float(os.environ.get("HUTCH_TEST_STARTUP_TIMEOUT", "1500"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(port: int) -> dict[str, str]:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("HUTCH_", "E2B_")):
            del env[k]
    env.update(HUTCH_DATA_DIR=str(DATA_DIR), HUTCH_HOST="127.0.0.1", HUTCH_PORT=str(port),
               HUTCH_INSTANCE=INSTANCE, HUTCH_SUBNET=SUBNET,
               HUTCH_TEMPLATES_DIR=str(TEMPLATES_DIR), HUTCH_LOG_LEVEL="debug",
               HUTCH_DOMAIN=DOMAIN)
    return env


@dataclass
class RunningServer:
    port: int
    process: subprocess.Popen | None = None
    key: str = ""
    extra_env: dict = field(default_factory=dict)   # settings for the next start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return DATA_DIR / "server.log"

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def start(self) -> None:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hutch", "serve"],
                env={**server_env(self.port), **self.extra_env},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"hutch serve exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hutch serve did not come up:\n{self.log_tail()}")
            time.sleep(0.05)
        self.key = (DATA_DIR / "admin.key").read_text().strip()

    def stop(self) -> int | None:
        """SIGTERM the server we started (by PID) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-KEY": self.key}, timeout=120)

    def e2b_env(self) -> dict[str, str]:
        return {"E2B_API_URL": self.url, "E2B_SANDBOX_URL": self.url, "E2B_API_KEY": self.key}


def _teardown_instance() -> None:
    code = ("import asyncio; from hutch.server.config import Config; "
            "from hutch.server.app import build_runtime; "
            "rt = build_runtime(Config.from_env()); asyncio.run(rt.teardown())")
    subprocess.run([sys.executable, "-c", code], env=server_env(0), check=False, timeout=300)


@pytest.fixture(scope="session")
def server():
    # Two runs of this suite on one host would share the instance (its data dir, bridge and
    # firewall): the second waits for the first rather than tearing things down under it.
    lock = os.open(f"/run/hutch-test-{INSTANCE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        srv = RunningServer(port=free_port())
        srv.start()
        try:
            yield srv
        finally:
            if srv.process is not None and srv.process.poll() is None:
                with srv.client() as c:
                    try:
                        for s in c.get("/sandboxes").json():
                            c.delete(f"/sandboxes/{s['sandboxID']}")
                    except httpx.HTTPError:
                        pass
            srv.stop()
            _teardown_instance()
    finally:
        os.close(lock)


@pytest.fixture
def api(server):
    with server.client() as c:
        yield c


@pytest.fixture
def e2b_env(server, monkeypatch):
    for k, v in server.e2b_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("E2B_DEBUG", raising=False)
    monkeypatch.delenv("E2B_DOMAIN", raising=False)
    return server.e2b_env()


@pytest.fixture
def sandboxes(api):
    """Sandbox ids a test creates; whatever is still alive at its end is killed."""
    made: list[str] = []
    yield made
    for sid in made:
        api.delete(f"/sandboxes/{sid}")
