"""hutch's benchmark suite: one command, numbers written to docs/benchmarks.md.

    .venv/bin/python bench/run.py [--quick]

It starts its own server (instance `hutchb`, its own subnet and data dir, the test suite's
built templates reused), measures through the HTTP API exactly what a client sees, and
measures the floor beside it in the same run: fork+exec of /bin/true and a bare `runc run` of
a bundle made by hutch's own runtime code. Nothing here is asserted; the numbers are reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from hutch.protocol import EnvelopeDecoder, encode_envelope

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "hutchb"
SUBNET = "10.179.0.0/16"
DATA_DIR = Path(os.environ.get("HUTCH_BENCH_DATA_DIR", "/var/lib/hutch-bench"))
TEMPLATES_DIR = Path(os.environ.get("HUTCH_BENCH_TEMPLATES_DIR", "/var/lib/hutch-test/templates"))
AGENT_PORT = "49983"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def summary(values: list[float]) -> str:
    return f"p50 {pct(values, 50):.1f} ms · p95 {pct(values, 95):.1f} ms · p99 {pct(values, 99):.1f} ms (n={len(values)})"


class Bench:
    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.api = httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=120)
        self.data = httpx.Client(base_url=url, timeout=120)

    def create(self, **body) -> dict:
        r = self.api.post("/sandboxes", json={"templateID": "base", **body})
        r.raise_for_status()
        return r.json()

    def kill(self, sbx: dict) -> None:
        self.api.delete(f"/sandboxes/{sbx['sandboxID']}")

    def headers(self, sbx: dict) -> dict:
        h = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": AGENT_PORT}
        if sbx.get("envdAccessToken"):
            h["X-Access-Token"] = sbx["envdAccessToken"]
        return h

    def run(self, sbx: dict, cmd: str, *, first_output: bool = False, argv: list | None = None) -> bytes:
        """Run a command through the agent as the sandbox's default user, the way
        `commands.run` sends it (`bash -l -c cmd`), or `argv` directly (no shell, as
        `sbx.exec`); return at the first output or at the end."""
        argv = argv or ["/bin/bash", "-l", "-c", cmd]
        body = encode_envelope({"process": {"cmd": argv[0], "args": argv[1:]}})
        headers = {**self.headers(sbx), "Content-Type": "application/connect+json",
                   "Connect-Protocol-Version": "1"}
        out = b""
        with self.data.stream("POST", "/process.Process/Start", content=body, headers=headers) as r:
            decoder = EnvelopeDecoder()
            for chunk in r.iter_raw():
                for env in decoder.feed(chunk):
                    msg = env.json()
                    event = msg.get("event", {})
                    if "data" in event:
                        out += event["data"].get("stdout", "").encode()
                        if first_output:
                            return out
                    if "end" in event or env.end_stream:
                        return out
        return out


def measure_create_to_first_output(b: Bench, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sbx = b.create()
        b.run(sbx, "echo hi", first_output=True)
        times.append((time.perf_counter() - t0) * 1000)
        b.kill(sbx)
    return times


def measure_exec(b: Bench, sbx: dict, n: int, argv: list | None = None) -> list[float]:
    b.run(sbx, "true", argv=argv)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        b.run(sbx, "true", argv=argv)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def measure_files(b: Bench, sbx: dict, mib: int) -> tuple[float, float]:
    payload = os.urandom(1024 * 1024) * mib
    params = {"path": "/home/user/big.bin", "username": "user"}
    headers = {**b.headers(sbx), "Content-Type": "application/octet-stream",
               "Content-Length": str(len(payload))}
    view = memoryview(payload)
    # Fed in 1 MiB slices: given one 100 MiB bytes object, httpx's sender re-copies the unsent
    # rest after every send and the client, not hutch, becomes what is measured.
    slices = (view[i:i + (1 << 20)] for i in range(0, len(view), 1 << 20))
    t0 = time.perf_counter()
    r = b.data.post("/files", params=params, content=slices, headers=headers)
    r.raise_for_status()
    write = len(payload) / (time.perf_counter() - t0) / 1e6
    t0 = time.perf_counter()
    got = 0
    with b.data.stream("GET", "/files", params=params, headers=b.headers(sbx)) as r:
        r.raise_for_status()
        for chunk in r.iter_raw(1 << 20):
            got += len(chunk)
    read = got / (time.perf_counter() - t0) / 1e6
    assert got == len(payload), (got, len(payload))
    return write, read


def sandbox_pids(sandbox_id: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if sandbox_id in Path(f"/proc/{entry}/cgroup").read_text():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measure_idle_memory(b: Bench, count: int = 10) -> tuple[float, float, float | None]:
    """PSS of init + agent of one idle sandbox alone, and per sandbox with `count` idle ones
    (they share the template's python and libraries, as a host full of sandboxes does), plus
    the cgroup's own usage figure for one."""
    sandboxes = [b.create() for _ in range(count)]
    try:
        for sbx in sandboxes:
            b.run(sbx, "true")
        time.sleep(1.0)
        per = [pss_mib(sandbox_pids(sbx["sandboxID"])) for sbx in sandboxes]
        r = b.api.get(f"/sandboxes/{sandboxes[0]['sandboxID']}/metrics")
        cg = None
        if r.status_code == 200 and r.json():
            cg = r.json()[-1].get("memUsed", 0) / 2**20
        shared = statistics.mean(per)
    finally:
        for sbx in sandboxes:
            b.kill(sbx)
    alone = b.create()
    try:
        b.run(alone, "true")
        time.sleep(1.0)
        single = pss_mib(sandbox_pids(alone["sandboxID"]))
    finally:
        b.kill(alone)
    return single, shared, cg


def host_objects(sandbox_id: str) -> list[str]:
    """Kernel objects named by the sandbox id still on the host (a cgroup cannot be removed
    while it holds processes, so no cgroup also means no process)."""
    left = []
    if sandbox_id in Path("/proc/self/mountinfo").read_text():
        left.append("mount")
    if os.path.exists(f"/run/netns/{INSTANCE}-{sandbox_id}"):
        left.append("netns")
    for ctrl in os.listdir("/sys/fs/cgroup"):
        if os.path.exists(f"/sys/fs/cgroup/{ctrl}/{INSTANCE}/{sandbox_id}"):
            left.append(f"cgroup {ctrl}")
    return left


def measure_kill(b: Bench, n: int) -> list[float]:
    """DELETE, then wait until no mount, netns, cgroup or process of the sandbox is left."""
    times = []
    for _ in range(n):
        sbx = b.create()
        b.run(sbx, "true")
        t0 = time.perf_counter()
        b.kill(sbx)
        deadline = t0 + 5
        while host_objects(sbx["sandboxID"]) and time.perf_counter() < deadline:
            time.sleep(0.001)
        times.append((time.perf_counter() - t0) * 1000)
        if host_objects(sbx["sandboxID"]):
            raise RuntimeError(f"sandbox {sbx['sandboxID']} left {host_objects(sbx['sandboxID'])} behind")
    return times


def measure_fork_exec(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def measure_bare_runc(n: int) -> list[float] | str:
    """`runc run` of the same kind of bundle hutch makes, doing `true`: the OCI floor."""
    try:
        from floor import bare_runc_bundle  # built from the runtime's own functions
    except ImportError as exc:
        return f"unavailable ({exc})"
    runc = shutil.which("runc")
    times = []
    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        bundle = bare_runc_bundle(Path(tmp), TEMPLATES_DIR)
        for i in range(n):
            t0 = time.perf_counter()
            subprocess.run([runc, "--root", f"{tmp}/state", "run", "--bundle", str(bundle), f"benchfloor{i}"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append((time.perf_counter() - t0) * 1000)
    for parent in Path("/sys/fs/cgroup").glob("**/hutchfloor"):  # runc leaves the parent
        for child in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
            child.rmdir()
    return times


def start_server() -> tuple[subprocess.Popen, str, str]:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HUTCH_DATA_DIR=str(DATA_DIR), HUTCH_PORT=str(port), HUTCH_HOST="127.0.0.1",
               HUTCH_INSTANCE=INSTANCE, HUTCH_SUBNET=SUBNET, HUTCH_TEMPLATES_DIR=str(TEMPLATES_DIR))
    log = open(DATA_DIR / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "hutch", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 1500
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited; see {DATA_DIR / 'server.log'}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, url, (DATA_DIR / "admin.key").read_text().strip()


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    code = ("import asyncio; from hutch.server.config import Config; from hutch.server.app import build_runtime; "
            "asyncio.run(build_runtime(Config.from_env()).teardown())")
    env = dict(os.environ, HUTCH_DATA_DIR=str(DATA_DIR), HUTCH_INSTANCE=INSTANCE, HUTCH_SUBNET=SUBNET,
               HUTCH_TEMPLATES_DIR=str(TEMPLATES_DIR))
    subprocess.run([sys.executable, "-c", code], env=env, check=False)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    n = 5 if args.quick else 50
    proc, url, key = start_server()
    rows: list[tuple[str, str, str]] = []
    try:
        b = Bench(url, key)
        b.kill(b.create())  # warm the template cache and the server
        create = measure_create_to_first_output(b, n)
        rows.append(("create → first command output", summary(create), "p50 ≤ 100 ms"))
        sbx = b.create()
        try:
            ex = measure_exec(b, sbx, n * 4)
            rows.append(('`commands.run("true")` round trip (`bash -l -c true`)', summary(ex), "p50 ≤ 5 ms"))
            argv = measure_exec(b, sbx, n * 4, argv=["/bin/true"])
            rows.append(('`sbx.exec("/bin/true")` round trip (no shell)', summary(argv), "–"))
            w, r = measure_files(b, sbx, 100)
            rows.append(("100 MiB file write / read", f"{w:.0f} MB/s / {r:.0f} MB/s", "≥ 300 MB/s each"))
        finally:
            b.kill(sbx)
        single, shared, cg = measure_idle_memory(b)
        cg_text = f"; cgroup usage {cg:.1f} MiB" if cg is not None else ""
        rows.append(("idle sandbox memory (PSS of init + agent)",
                     f"{shared:.1f} MiB each with 10 idle; {single:.1f} MiB alone{cg_text}", "≤ 10 MiB"))
        kills = measure_kill(b, max(5, n // 2))
        rows.append(("kill → all kernel objects gone", summary(kills), "≤ 50 ms"))
    finally:
        stop_server(proc)
    fork = measure_fork_exec(n * 4)
    rows.append(("floor: fork+exec of /bin/true", summary(fork), "–"))
    runc = measure_bare_runc(max(5, n // 2))
    rows.append(("floor: bare `runc run` doing `true`", summary(runc) if isinstance(runc, list) else runc, "–"))
    ratio = pct(create, 50) / pct(runc, 50) if isinstance(runc, list) else None

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        "Measured by `bench/run.py` through the HTTP API, as a client sees it, without any warm pool.",
        f"Run {stamp} on {machine()}.",
        "Regenerate with `.venv/bin/python bench/run.py`.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        *[f"| {a} | {b_} | {c} |" for a, b_, c in rows],
        "",
    ]
    if ratio:
        lines.append(f"create → first output is {ratio:.1f}× a bare `runc run` of `true`.")
        lines.append("")
    lines += [
        "Where a create's time goes (the `Server-Timing` header of every create answer has the",
        "breakdown): `runc run` of the bundle (the floor above), then the agent's start-up, most",
        "of it Python importing asyncio, then `/init`. A command's round trip is two HTTP hops",
        "(client → server → agent socket), the spawn as the sandbox user, and the login shell",
        "`commands.run` asks for. Idle memory is counted as PSS, so libraries shared by sandboxes",
        "of one template are split between them; one sandbox alone carries all of them.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
