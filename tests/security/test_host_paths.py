"""The host never follows paths that code inside a sandbox controls.

Root inside a sandbox can write its run dir (``/run/hutch``, a host directory under the data
dir). If the server connected to ``agent.sock`` by path, a symlink put there would make the
server, as host root, talk to whatever host socket the symlink names.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading

import pytest
from e2b import Sandbox


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
