"""The egress proxy's cost, measured from inside sandboxes against a web server of our own.

A network namespace made here holds the server (HTTP on 80, files sent with sendfile so that
it is not the bottleneck) at 198.51.100.77, routed from the host into the namespace only; no
packet leaves the machine. Two sandboxes download from it: one with an egress policy that
has a domain rule, whose connections to port 80 the firewall sends through the proxy, and one
with a policy of addresses only, whose connections go straight through the kernel. The host
name asked for is one the rules do not mention, so the proxy relays to the address dialled
(a name the policy allows costs one lookup more, answered from the resolver's recent answers).

    .venv/bin/python bench/egress.py      # this section alone, against its own server
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

SERVER = "198.51.100.77"
NETNS = "hutchb-web"
HOST_IF = "hbweb0"
BIG_MIB = 512


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def _refuse_overlap() -> None:
    """Never take over an address the host already routes somewhere real."""
    out = subprocess.run(["ip", "route", "show", "to", "match", SERVER], capture_output=True,
                         text=True).stdout
    if any(not line.startswith("default") for line in out.splitlines() if line.strip()):
        sys.exit(f"{SERVER} is routed on this host already ({out.strip()}); not faking it")


class WebServer:
    """A static file server in a namespace of our own: GET /big (BIG_MIB MiB), GET /small."""

    def __init__(self) -> None:
        self.files = {"/big": Path("/dev/shm/hutch-bench-big"), "/small": None}
        self._stop = False

    def __enter__(self) -> "WebServer":
        _refuse_overlap()
        self._teardown()
        with open(self.files["/big"], "wb") as f:
            f.truncate(BIG_MIB * 2**20)
        _ip("netns", "add", NETNS)
        _ip("link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _ip("link", "set", HOST_IF, "up")
        _ip("route", "add", f"{SERVER}/32", "dev", HOST_IF)
        for cmd in (("addr", "add", f"{SERVER}/32", "dev", "eth0"), ("link", "set", "lo", "up"),
                    ("link", "set", "eth0", "up"), ("route", "add", "default", "dev", "eth0")):
            _ip("-n", NETNS, *cmd)
        Path(f"/proc/sys/net/ipv4/conf/{HOST_IF}/proxy_arp").write_text("1")
        self.sock = self._listen()
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _listen(self) -> socket.socket:
        """A listening socket inside the namespace."""
        from hutch.runtime.network import in_netns

        def bind() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((SERVER, 80))
            s.listen(128)
            return s

        return in_netns(Path(f"/run/netns/{NETNS}"), bind)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            if path == "/big":
                size = self.files["/big"].stat().st_size
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % size)
                with open(self.files["/big"], "rb") as f:
                    conn.sendfile(f)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def __exit__(self, *exc) -> None:
        self._stop = True
        self.sock.close()
        self._teardown()

    def _teardown(self) -> None:
        _ip("route", "del", f"{SERVER}/32", check=False)
        _ip("link", "del", HOST_IF, check=False)
        _ip("netns", "del", NETNS, check=False)
        self.files["/big"].unlink(missing_ok=True)


#: The two ways a sandbox's web connection leaves: through the proxy (a policy with a domain
#: rule) or straight through the kernel (a policy of addresses only).
VARIANTS = {
    "through the egress proxy": {"network": {"denyOut": ["blocked.example"]}},
    "direct": {"network": {"denyOut": ["198.51.100.250"]}},
}


def measure(bench, run: Callable[[dict, str], bytes], downloads: int, requests: int,
            pct: Callable[[list, float], float], summary: Callable[[list], str]) -> list:
    """Rows for the report: throughput of a large download and time to the first byte of a
    small one, each way, interleaved, and the ratios the targets speak of."""
    rows, speeds, firsts = [], {k: [] for k in VARIANTS}, {k: [] for k in VARIANTS}
    with WebServer():
        boxes = {name: bench.create(**body) for name, body in VARIANTS.items()}
        try:
            curl = "curl -sS -o /dev/null -H 'Host: bench.example' "
            for name, sbx in boxes.items():        # warm: the route, the caches
                run(sbx, curl + f"http://{SERVER}/small")
            for _ in range(downloads):
                for name, sbx in boxes.items():
                    out = run(sbx, curl + f"-w '%{{speed_download}}' http://{SERVER}/big")
                    speeds[name].append(float(out.decode().strip().split()[-1]) / 1e6)
            # Timings go to a file and come back at the end: streamed line by line they
            # would put the server's work of relaying them right on the next request's path.
            loop = (f"for i in $(seq {requests}); do {curl} -w '%{{time_starttransfer}}\\n' "
                    f"http://{SERVER}/small; done > /tmp/firsts; cat /tmp/firsts")
            for _ in range(2):
                for name, sbx in boxes.items():
                    out = run(sbx, loop).decode().split()
                    firsts[name] += [float(t) * 1000 for t in out]
        finally:
            for sbx in boxes.values():
                bench.kill(sbx)
    proxied, direct = "through the egress proxy", "direct"
    for name in VARIANTS:
        s = sorted(speeds[name])
        rows.append((f"{BIG_MIB} MiB HTTP download, {name}",
                     f"median {pct(s, 50):.0f} MB/s (min {s[0]:.0f}, max {s[-1]:.0f}; "
                     f"n={len(s)})", "–"))
    ratio = pct(speeds[proxied], 50) / pct(speeds[direct], 50)
    rows.append(("… throughput through the proxy / direct", f"{ratio:.2f}", "≥ 0.8"))
    for name in VARIANTS:
        rows.append((f"connect → first byte of a small GET, {name}", summary(firsts[name]), "–"))
    added = pct(firsts[proxied], 50) - pct(firsts[direct], 50)
    rows.append(("… added by the proxy", f"{added:+.2f} ms p50", "≤ 1 ms p50"))
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as suite

    suite.print_alone(lambda b: measure(b, lambda sbx, cmd: b.run(sbx, cmd), 15, 100,
                                        suite.pct, suite.summary))


if __name__ == "__main__":
    main()
