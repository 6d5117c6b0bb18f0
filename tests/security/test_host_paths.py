"""The host never follows paths that code inside a sandbox controls, and a host path that
reaches a sandbox anyway leads nowhere.

Root inside a sandbox can write its run dir (``/run/hutch``, a host directory under the data
dir). If the server connected to ``agent.sock`` by path, a symlink put there would make the
server, as host root, talk to whatever host socket the symlink names.

The other way round: an OCI runtime that leaks a host file descriptor into the container
(the CVE-2024-21626 class) hands the sandbox a way into the host's tree. The test plays that
runtime: it passes an fd of the host's root directory into a running sandbox, and Landlock
must refuse every open through it, for root inside as for the user.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
from pathlib import Path

import pytest
from e2b import Sandbox

from hutch.agent import landlock
from hutch.server.selftest import offer_host_fd
from tests.conftest import TEST_DATA_DIR
from tests.security.test_isolation import host_pids_of


class HostSocket:
    """A unix socket on the host that records every connection made to it."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.accepted = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(10)


@pytest.fixture
def host_socket(tmp_path):
    tmp_path.chmod(0o755)
    sock = HostSocket(tmp_path / "host.sock")
    yield sock
    sock.close()


def test_agent_socket_replaced_by_a_symlink_to_a_host_socket_is_never_used(
        server_env, host_socket):
    sbx = Sandbox.create(timeout=120)
    try:
        # Root inside swaps its agent's socket for a link to a socket on the host.
        sbx.commands.run(f"mv /run/hutch/agent.sock /run/hutch/real.sock && "
                         f"ln -s {host_socket.path} /run/hutch/agent.sock", user="root")

        def poke(_):
            try:
                sbx.files.exists("/etc/hostname")
            except Exception:   # noqa: BLE001 - the link refused: exactly what should happen
                pass

        # More requests at once than the server keeps idle connections, so new ones are made.
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            list(pool.map(poke, range(48)))
        assert host_socket.accepted == 0
    finally:
        sbx.kill()


# Waits for the host's fd on a unix socket, then tries three ways through it: an open relative
# to it, a cwd on it, and the magic link /proc/self/fd/N.
RECEIVER = r"""
import json, os, socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
server.listen(1)
server.settimeout(30)
fd = socket.recv_fds(server.accept()[0], 16, 1)[1][0]
out = {}
def attempt(name, fn):
    try:
        out[name] = fn()
    except OSError as e:
        out[name] = e.errno
attempt("openat", lambda: sorted(os.listdir(os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd))))
def cwd():
    os.fchdir(fd)
    return open("etc/hostname").read()
attempt("cwd", cwd)
attempt("magic_link", lambda: os.listdir(f"/proc/self/fd/{fd}"))
print(json.dumps(out))
"""


@pytest.mark.skipif(landlock.abi() == 0, reason="this kernel has no Landlock")
@pytest.mark.parametrize("user", ["root", "user"])
def test_a_host_directory_fd_leaked_into_a_sandbox_leads_nowhere(server_env, user):
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/tmp/receiver.py", RECEIVER)
        inside = f"/tmp/leak-{user}.sock"
        handle = sbx.commands.run(f"python3 /tmp/receiver.py {inside}", user=user,
                                  background=True)
        rootfs = TEST_DATA_DIR / "runtime" / "sandboxes" / sbx.sandbox_id / "rootfs"
        offer_host_fd(rootfs / inside.lstrip("/"), timeout=30)
        result = handle.wait()
        out = json.loads(result.stdout)
        assert out == {"openat": 13, "cwd": 13, "magic_link": 13}, out    # EACCES, all
    finally:
        sbx.kill()


def test_only_the_init_keeps_the_capability_the_agent_confined_itself_with(server_env):
    """Seen from the host: every process of the sandbox but its init (PID 1) has lost
    CAP_SYS_ADMIN from every set, the bounding set included."""
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.commands.run("sleep 60 >/dev/null 2>&1 &", user="root")
        sbx.commands.run("sudo sleep 61 >/dev/null 2>&1 &")
        sys_admin = 1 << landlock.CAP_SYS_ADMIN
        checked = 0
        for pid in host_pids_of(sbx.sandbox_id):
            try:
                status = dict(line.split(":", 1) for line in
                              Path(f"/proc/{pid}/status").read_text().splitlines())
            except OSError:
                continue                                  # ended meanwhile
            if status["NSpid"].split()[-1] == "1":
                continue                                  # the init
            held = 0
            for field in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
                held |= int(status[field], 16)
            assert not held & sys_admin, (pid, status["Name"])
            checked += 1
        assert checked >= 3          # the agent and the two sleeps at least
    finally:
        sbx.kill()
