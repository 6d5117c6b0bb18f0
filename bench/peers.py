"""The alternatives a user would pick instead of hutch, measured in the same run beside it.

Starting `true` in isolation:
  * `bwrap` one-shot with the namespaces a sandbox has (user, pid, mount, ipc, uts, net,
    cgroup) over the base template's root filesystem, read-only;
  * `podman run --rootfs` of the same root filesystem (an overlay of our own on top, so that
    podman's writes (/etc/mtab, mount points) never reach the shared template), with the
    sandboxes' uid range, no network and a private cgroup namespace.
Running code: Jupyter Kernel Gateway in a venv of the bench's own (made on first use), on
loopback: a kernel's start → the result of its first `1+1`, and a warm `1+1` over its
websocket in the Jupyter messaging protocol; and, as the floor under both it and hutch's
interpreter, the same kernel driven directly by jupyter_client over ZeroMQ.

A peer that is missing or cannot run here is reported as such, never fails the run.

    .venv/bin/python bench/peers.py [--quick]     # this section alone (hutch measured too)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import httpx

#: Namespaces a sandbox has, as bwrap spells them (it always makes a mount namespace).
BWRAP_NAMESPACES = ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                    "--unshare-net", "--unshare-cgroup")
#: Where podman's containers' cgroups go, so they can be removed afterwards (podman leaves
#: the parent behind).
PODMAN_CGROUP_PARENT = "hutchpeers"
KG_PACKAGES = ("jupyter_kernel_gateway", "ipykernel")



def _timed(argv: list[str], n: int) -> list[float] | str:
    """Run argv once as a probe (its error is the answer if it fails), then n times timed."""
    probe = subprocess.run(argv, capture_output=True, text=True)
    if probe.returncode != 0:
        err = (probe.stderr or probe.stdout).strip().splitlines()
        return f"does not run here: {err[-1][:200] if err else f'exit {probe.returncode}'}"
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t0) * 1000)
    return times


NOT_INSTALLED = "not installed (`bash scripts/install --bench` installs it)"


def measure_bwrap(rootfs: Path, n: int) -> list[float] | str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return NOT_INSTALLED
    return _timed([bwrap, *BWRAP_NAMESPACES, "--ro-bind", str(rootfs), "/", "--proc", "/proc",
                   "--dev", "/dev", "/bin/true"], n)


@contextmanager
def overlay_of(rootfs: Path) -> Iterator[Path]:
    """A writable overlay on top of rootfs in a temporary directory; what is written goes to
    the directory, which is gone afterwards. Its directories are world-searchable: podman's
    runtime reaches the rootfs as the container's root, an unprivileged uid on the host."""
    tmp = Path(tempfile.mkdtemp(prefix="hutch-bench-podman-"))
    os.chmod(tmp, 0o755)
    merged = tmp / "merged"
    for d in ("upper", "work", "merged"):
        (tmp / d).mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={rootfs},upperdir={tmp}/upper,workdir={tmp}/work", str(merged)],
                   check=True, capture_output=True)
    try:
        yield merged
    finally:
        # podman may leave mounts of its own under its storage root in tmp: those go first.
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mnt in sorted((m for m in mounts if m.startswith(str(tmp))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_cgroups(name: str) -> None:
    for parent in Path("/sys/fs/cgroup").glob(f"**/{name}"):
        for child in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
            try:
                child.rmdir()
            except OSError:
                pass


def measure_podman(rootfs: Path, n: int) -> list[float] | str:
    podman = shutil.which("podman")
    if podman is None:
        return NOT_INSTALLED
    uid, gid = rootfs.stat().st_uid, rootfs.stat().st_gid
    try:
        with overlay_of(rootfs) as merged:
            state = merged.parent
            argv = [podman, "--root", f"{state}/storage", "--runroot", f"{state}/run",
                    "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                    "--log-level", "error",
                    "run", "--rm", "--network", "none", "--cgroupns", "private",
                    "--cgroup-parent", f"/{PODMAN_CGROUP_PARENT}",
                    "--uidmap", f"0:{uid}:65536", "--gidmap", f"0:{gid}:65536",
                    "--rootfs", str(merged), "/bin/true"]
            return _timed(argv, n)
    except subprocess.CalledProcessError as exc:
        return f"does not run here: {exc.stderr.decode(errors='replace').strip()[:200]}"
    finally:
        _remove_cgroups(PODMAN_CGROUP_PARENT)


# -- Jupyter Kernel Gateway -------------------------------------------------------------------


def kernel_gateway(venv: Path) -> Path | str:
    """The gateway's executable in the bench's venv, which is made on first use."""
    exe = venv / "bin" / "jupyter-kernelgateway"
    if exe.exists():
        return exe
    try:
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *KG_PACKAGES],
                       check=True, capture_output=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        return f"could not be installed: {err.decode(errors='replace').strip()[-200:] or exc}"
    return exe if exe.exists() else "could not be installed: no jupyter-kernelgateway"


def _jupyter_env(home: Path) -> dict:
    """Jupyter's config, data and runtime files under the bench's directory, not root's home."""
    return dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"),
                JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                IPYTHONDIR=str(home / "ipython"), JUPYTER_PLATFORM_DIRS="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A Kernel Gateway on loopback, and a client of its REST and websocket APIs."""

    def __init__(self, exe: Path, home: Path) -> None:
        self.port = _free_port()
        self.token = uuid.uuid4().hex
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        self.log = open(home / "gateway.log", "ab")
        self.proc = subprocess.Popen(
            [str(exe), "--KernelGatewayApp.ip=127.0.0.1", f"--KernelGatewayApp.port={self.port}",
             f"--KernelGatewayApp.auth_token={self.token}"],
            env=_jupyter_env(home), stdout=self.log, stderr=self.log, cwd=home)
        self.http = httpx.Client(base_url=self.url, timeout=120,
                                 headers={"Authorization": f"token {self.token}"})
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited (see {home / 'gateway.log'})")
            try:
                if self.http.get("/api").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the gateway did not answer within 120 s")
            time.sleep(0.1)

    def close(self) -> None:
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def start_kernel(self) -> str:
        r = self.http.post("/api/kernels", json={"name": "python3"})
        r.raise_for_status()
        return r.json()["id"]

    def delete_kernel(self, kernel: str) -> None:
        self.http.delete(f"/api/kernels/{kernel}")

    def channels(self, kernel: str):
        from websockets.sync.client import connect

        return connect(f"ws://127.0.0.1:{self.port}/api/kernels/{kernel}/channels",
                       additional_headers={"Authorization": f"token {self.token}"},
                       max_size=None)


def execute(ws, code: str) -> dict[str, float]:
    """Send an execute_request on the shell channel; return when the result, the reply and
    the kernel's idle status (what ends hutch's `end_of_execution`) were read."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "bench", "session": "bench",
                   "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    seen: dict[str, float] = {}
    while not ("execute_reply" in seen and "idle" in seen):
        msg = json.loads(ws.recv())
        now = time.perf_counter()
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "error":
            raise RuntimeError(f"the gateway's kernel failed {code!r}: {msg['content']}")
        if kind == "status":
            kind = msg["content"]["execution_state"]
        seen.setdefault(kind, now)
    seen["end"] = max(seen["execute_reply"], seen["idle"])
    return seen


def measure_gateway(gw: Gateway, starts: int, warm: int) -> dict[str, list[float]]:
    """A kernel's start → the result of its first `1+1` (one unmeasured round first, so its
    libraries are in the page cache, as hutch's first run_code is measured), and warm
    round trips on one kernel."""
    out: dict[str, list[float]] = {"first": [], "start": [], "warm_result": [], "warm_end": []}
    for i in range(starts + 1):
        t0 = time.perf_counter()
        kernel = gw.start_kernel()
        t1 = time.perf_counter()
        try:
            with gw.channels(kernel) as ws:
                seen = execute(ws, "1+1")
        finally:
            gw.delete_kernel(kernel)
        if i:
            out["first"].append((seen["execute_result"] - t0) * 1000)
            out["start"].append((t1 - t0) * 1000)
    kernel = gw.start_kernel()
    try:
        with gw.channels(kernel) as ws:
            execute(ws, "1+1")
            for _ in range(warm):
                t0 = time.perf_counter()
                seen = execute(ws, "1+1")
                out["warm_result"].append((seen["execute_result"] - t0) * 1000)
                out["warm_end"].append((seen["end"] - t0) * 1000)
    finally:
        gw.delete_kernel(kernel)
    return out


#: Run in the gateway's venv: the same kernel, no gateway, no sandbox; jupyter_client's
#: blocking client over ZeroMQ (TCP on loopback, as the gateway has it).
_DIRECT = r"""
import json, sys, time
from jupyter_client.manager import KernelManager
starts, warm = int(sys.argv[1]), int(sys.argv[2])
out = {"first": [], "warm_end": []}
quiet = lambda msg: None
for i in range(starts + 1):
    t0 = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(120)
    kc.execute_interactive("1+1", output_hook=quiet, timeout=120)
    if i:
        out["first"].append((time.perf_counter() - t0) * 1000)
    if i < starts:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
for _ in range(warm):
    t0 = time.perf_counter()
    kc.execute_interactive("1+1", output_hook=quiet, timeout=120)
    out["warm_end"].append((time.perf_counter() - t0) * 1000)
kc.stop_channels()
km.shutdown_kernel(now=True)
print(json.dumps(out))
"""


def measure_kernel_direct(venv: Path, home: Path, starts: int, warm: int) -> dict | str:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", _DIRECT, str(starts), str(warm)],
                          capture_output=True, text=True, env=_jupyter_env(home), cwd=home,
                          timeout=900)
    if proc.returncode != 0:
        return f"does not run here: {proc.stderr.strip().splitlines()[-1][:200]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the section ------------------------------------------------------------------------------


def _ratio(hutch: list[float] | None, peer, pct) -> str:
    """hutch's p50 over the peer's: how many times the peer's time hutch takes."""
    if not hutch or not isinstance(peer, list) or not peer:
        return "–"
    return f"{pct(hutch, 50) / pct(peer, 50):.2f}"


def measure(data_dir: Path, rootfs: Path, hutch: dict[str, list[float] | None], floors: dict,
            quick: bool, pct: Callable, summary: Callable) -> tuple[list, list]:
    """Rows of two tables: starting `true` (or a first command), and running code.

    hutch: this run's `create` (cold create → first output), `pooled` (the same from a warm
    pool, or None), `first_run_code` (create → result of the first run_code) and `run_code`
    (warm, to end_of_execution). floors: `fork+exec` and `runc` results measured alike."""
    n = 5 if quick else 50
    starts, warm = (3, 30) if quick else (10, 200)
    show = lambda r: summary(r) if isinstance(r, list) else r   # noqa: E731

    start_rows = []
    contenders = [
        ("hutch: create → first command output, cold (HTTP API)", hutch.get("create")),
        ("hutch: the same from the warm pool", hutch.get("pooled")),
        ("fork+exec of `/bin/true`", floors.get("fork")),
        ("bare `runc run` of hutch's bundle, doing `true`", floors.get("runc")),
        ("`bwrap` one-shot of `true`, the same namespaces, the template's rootfs",
         measure_bwrap(rootfs, n)),
        ("`podman run --rootfs` of the same rootfs, doing `true`", measure_podman(rootfs, n)),
    ]
    for name, result in contenders:
        if result is None:
            continue
        cold, pooled = hutch.get("create"), hutch.get("pooled")
        start_rows.append((name, show(result),
                           "–" if result is cold else _ratio(cold, result, pct),
                           "–" if result is pooled else _ratio(pooled, result, pct)))

    code_rows = []
    venv, home = data_dir / "kg-venv", data_dir / "kg"
    exe = kernel_gateway(venv)
    first, warm_hutch = hutch.get("first_run_code"), hutch.get("run_code")
    code_rows.append(("hutch: create → result of the first `run_code(\"1+1\")`",
                      show(first) if first else "not measured", "–"))
    code_rows.append(("hutch: warm `run_code(\"1+1\")` (to `end_of_execution`)",
                      show(warm_hutch) if warm_hutch else "not measured", "–"))
    if isinstance(exe, str):
        code_rows.append(("Jupyter Kernel Gateway", exe, "–"))
        return start_rows, code_rows
    try:
        gw = Gateway(exe, home)
    except RuntimeError as exc:
        code_rows.append(("Jupyter Kernel Gateway", f"does not run here: {exc}", "–"))
        return start_rows, code_rows
    try:
        kg = measure_gateway(gw, starts, warm)
    finally:
        gw.close()
    code_rows += [
        ("Kernel Gateway: start a kernel → result of its first `1+1`", show(kg["first"]),
         _ratio(first, kg["first"], pct)),
        ("… the kernel's start alone (`POST /api/kernels` answered)", show(kg["start"]), "–"),
        ("Kernel Gateway: warm `1+1` over its websocket, to the kernel's idle",
         show(kg["warm_end"]), _ratio(warm_hutch, kg["warm_end"], pct)),
        ("… to the `execute_result`", show(kg["warm_result"]), "–"),
    ]
    direct = measure_kernel_direct(venv, home, starts, warm)
    if isinstance(direct, str):
        code_rows.append(("the kernel alone (jupyter_client, no gateway)", direct, "–"))
    else:
        code_rows += [
            ("floor: the kernel alone, jupyter_client over ZeroMQ: start → first `1+1`",
             show(direct["first"]), _ratio(first, direct["first"], pct)),
            ("floor: … warm `1+1`, to the kernel's idle", show(direct["warm_end"]),
             _ratio(warm_hutch, direct["warm_end"], pct)),
        ]
    return start_rows, code_rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run

    run.main_for("peers")
