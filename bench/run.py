"""hutch's benchmark suite: one command, numbers written to docs/benchmarks.md.

    .venv/bin/python bench/run.py [--quick] [--out FILE]

It starts its own server (instance `hutchb`, its own subnet and data dir, the test suite's
built templates reused), measures through the HTTP API exactly what a client sees, and
measures the floor beside it in the same run: fork+exec of /bin/true and a bare `runc run` of
a bundle made by hutch's own runtime code. Sandboxes of the `code-interpreter` template are
measured the same way, through the interpreter's `/execute` as `run_code` sends it. Nothing
here is asserted; the numbers are reported.
"""

from __future__ import annotations

import argparse
import base64
import json
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
from typing import Callable, NamedTuple

import httpx

from hutch.protocol import EnvelopeDecoder, encode_envelope

sys.path.insert(0, str(Path(__file__).resolve().parent))
import egress  # noqa: E402 - the egress proxy's section, a module of its own
import templates  # noqa: E402 - templates of your own, likewise

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "hutchb"
SUBNET = "10.179.0.0/16"
DATA_DIR = Path(os.environ.get("HUTCH_BENCH_DATA_DIR", "/var/lib/hutch-bench"))
TEMPLATES_DIR = Path(os.environ.get("HUTCH_BENCH_TEMPLATES_DIR", "/var/lib/hutch-test/templates"))
AGENT_PORT = "49983"
INTERPRETER_PORT = "49999"
CODE_TEMPLATE = "code-interpreter"
#: The parts of a sandbox whose memory is reported apart, in the order they are shown.
KINDS = ("init + agent", "interpreter", "kernel", "other")


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

    def headers(self, sbx: dict, port: str = AGENT_PORT) -> dict:
        h = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": port}
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
                        out += base64.b64decode(event["data"].get("stdout", ""))
                        if first_output:
                            return out
                    if "end" in event or env.end_stream:
                        return out
        return out

    def run_code(self, sbx: dict, code: str) -> dict[str, float]:
        """`POST /execute` to the sandbox's code interpreter, as `run_code` sends it, read to
        the stream's end; return when each line type was first read (`perf_counter`), so one
        call can be timed both to its result and to its end. A failed execution raises: its
        time would not be the time of `code`."""
        seen: dict[str, float] = {}
        with self.data.stream("POST", "/execute", json={"code": code},
                              headers=self.headers(sbx, INTERPRETER_PORT)) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                now = time.perf_counter()
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] == "error":
                    raise RuntimeError(f"run_code({code!r}) failed: {event}")
                seen.setdefault(event["type"], now)
        if "end_of_execution" not in seen:
            raise RuntimeError(f"run_code({code!r}): the stream ended early ({sorted(seen)})")
        return seen


def measure_create_to_first_output(b: Bench, n: int, **body) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sbx = b.create(**body)
        try:
            b.run(sbx, "echo hi", first_output=True)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            b.kill(sbx)
    return times


#: The network variants a create is measured in, interleaved so that drift on a noisy host
#: falls on all of them alike.
NETWORK_VARIANTS = {
    "no network (`allow_internet_access: false`)": {"allow_internet_access": False},
    "internet, default policy": {},
    "internet, an egress policy (deny list and a domain rule)": {
        "network": {"denyOut": ["198.51.100.0/24"], "allowOut": ["example.com"]}},
}


def measure_network_creates(b: Bench, n: int) -> dict[str, list[float]]:
    """create → first output for each network variant, one of each in turn."""
    out: dict[str, list[float]] = {name: [] for name in NETWORK_VARIANTS}
    for _ in range(n):
        for name, body in NETWORK_VARIANTS.items():
            out[name] += measure_create_to_first_output(b, 1, **body)
    return out


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


def process_kind(pid: int) -> str:
    """Which part of a sandbox a process is, from its command line (init's carries the
    agent's): memory is cut part by part, so it is reported part by part."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"hutch.agent.interpreter" in argv:
        return "interpreter"
    if any(b"ipykernel" in arg for arg in argv):     # the launcher, or its -c start-up line
        return "kernel"
    if b"hutch.agent" in argv:
        return "init + agent"
    return "other"


class Memory(NamedTuple):
    pss: dict[str, float]       # MiB by process kind
    cgroup: float | None        # MiB, the usage the sandbox's metrics report

    @property
    def total(self) -> float:
        return sum(self.pss.values())

    def split(self) -> str:
        return " · ".join(f"{k} {self.pss[k]:.1f}" for k in KINDS if k in self.pss) + " MiB"


def sandbox_memory(b: Bench, sbx: dict) -> Memory:
    pss: dict[str, float] = {}
    for pid in sandbox_pids(sbx["sandboxID"]):
        try:
            kind = process_kind(pid)
        except OSError:
            continue        # it exited since the listing
        pss[kind] = pss.get(kind, 0.0) + pss_mib([pid])
    r = b.api.get(f"/sandboxes/{sbx['sandboxID']}/metrics")
    cg = r.json()[-1].get("memUsed", 0) / 2**20 if r.status_code == 200 and r.json() else None
    return Memory(pss, cg)


def mean_memory(samples: list[Memory]) -> Memory:
    kinds = {k for m in samples for k in m.pss}
    cgs = [m.cgroup for m in samples if m.cgroup is not None]
    return Memory({k: statistics.mean(m.pss.get(k, 0.0) for m in samples) for k in kinds},
                  statistics.mean(cgs) if cgs else None)


def measure_idle_memory(b: Bench, count: int, template: str, wake: Callable[[dict], object],
                        settle: float) -> tuple[Memory, Memory]:
    """An idle sandbox's memory once `wake` has used it and `settle` seconds have passed: one
    alone, and the mean per sandbox with `count` idle ones of the template (they share its
    python and libraries, as a host full of sandboxes does)."""
    sandboxes: list[dict] = []
    try:
        for _ in range(count):
            sandboxes.append(b.create(templateID=template))
        for sbx in sandboxes:
            wake(sbx)
        time.sleep(settle)
        shared = mean_memory([sandbox_memory(b, sbx) for sbx in sandboxes])
    finally:
        for sbx in sandboxes:
            b.kill(sbx)
    alone = b.create(templateID=template)
    try:
        wake(alone)
        time.sleep(settle)
        single = sandbox_memory(b, alone)
    finally:
        b.kill(alone)
    return single, shared


def measure_run_code(b: Bench, sbx: dict, n: int) -> list[float]:
    """`run_code("1+1")` on the default context, its kernel warm: from sending the request
    until the `end_of_execution` line has been read."""
    b.run_code(sbx, "1+1")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        seen = b.run_code(sbx, "1+1")
        times.append((seen["end_of_execution"] - t0) * 1000)
    return times


def measure_first_run_code(b: Bench, n: int) -> tuple[list[float], list[float], list[float]]:
    """POST /sandboxes of the code-interpreter template → the result line of `1+1`, and the
    two halves apart (the create's answer; from it to the result): the interpreter starts the
    default kernel as the sandbox starts, so the second half is what the create did not hide
    of the kernel's start. One unmeasured round first, so the kernel's libraries are in the
    page cache as on a host that has run the template before."""
    total, create, first = [], [], []
    for i in range(n + 1):
        t0 = time.perf_counter()
        sbx = b.create(templateID=CODE_TEMPLATE)
        try:
            t1 = time.perf_counter()
            seen = b.run_code(sbx, "1+1")
        finally:
            b.kill(sbx)
        if i:
            total.append((seen["result"] - t0) * 1000)
            create.append((t1 - t0) * 1000)
            first.append((seen["result"] - t1) * 1000)
    return total, create, first


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
               HUTCH_INSTANCE=INSTANCE, HUTCH_SUBNET=SUBNET, HUTCH_TEMPLATES_DIR=str(TEMPLATES_DIR),
               # No bandwidth cap: the network measures show the path's own cost.
               HUTCH_EGRESS_RATE_MBIT="0")
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
    """Stop the server, then tear the instance down: that destroys every sandbox it still has,
    so none outlives the bench even when a measurement failed midway."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
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
    tpl_rows: list[tuple[str, str, str]] = []
    ci_rows: list[tuple[str, str, str]] = []
    net_rows: list[tuple[str, str, str]] = []
    try:
        b = Bench(url, key)
        b.kill(b.create())  # warm the template cache and the server
        create = measure_create_to_first_output(b, n)
        rows.append(("create → first command output", summary(create), "p50 ≤ 100 ms"))
        nets = measure_network_creates(b, max(5, n // 2))
        base_net = pct(nets["no network (`allow_internet_access: false`)"], 50)
        for name, times in nets.items():
            extra = pct(times, 50) - base_net
            net_rows.append((f"create → first output, {name}", summary(times),
                             f"{extra:+.1f} ms p50 (target ≤ +5 ms)" if extra else "–"))
        net_rows += egress.measure(b, b.run, 2 if args.quick else 5, 20 if args.quick else 100,
                                   pct, summary)
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
        single, shared = measure_idle_memory(b, 10, "base", lambda s: b.run(s, "true"), 1.0)
        cg_text = f"; cgroup usage {shared.cgroup:.1f} MiB" if shared.cgroup is not None else ""
        rows.append(("idle sandbox memory (PSS of init + agent)",
                     f"{shared.total:.1f} MiB each with 10 idle; {single.total:.1f} MiB alone{cg_text}",
                     "≤ 10 MiB"))
        kills = measure_kill(b, max(5, n // 2))
        rows.append(("kill → all kernel objects gone", summary(kills), "≤ 50 ms"))

        tpl_rows = templates.measure(b, b.run, 3 if args.quick else 10, pct, summary)

        total, create_ci, first = measure_first_run_code(b, 3 if args.quick else 10)
        ci_rows.append(('create → result of the first `run_code("1+1")`', summary(total), "≤ 0.8 s"))
        ci_rows.append(("… the create alone", summary(create_ci), "–"))
        ci_rows.append(("… the first `run_code` alone (create answered → result)", summary(first), "–"))
        sbx = b.create(templateID=CODE_TEMPLATE)
        try:
            warm = measure_run_code(b, sbx, 30 if args.quick else 200)
        finally:
            b.kill(sbx)
        ci_rows.append(('`run_code("1+1")` round trip, warm context (to `end_of_execution`)', summary(warm),
                        "p50 ≤ 5 ms · p99 ≤ 15 ms"))
        single, shared = measure_idle_memory(b, 5, CODE_TEMPLATE, lambda s: b.run_code(s, "1+1"), 3.0)
        ci_rows.append(("idle sandbox memory (PSS of all its processes)",
                        f"{shared.total:.1f} MiB each with 5 idle; {single.total:.1f} MiB alone", "≤ 50 MiB"))
        ci_rows.append(("… by process, each with 5 idle", shared.split(), "–"))
        ci_rows.append(("… by process, alone", single.split(), "–"))
        if shared.cgroup is not None and single.cgroup is not None:
            ci_rows.append(("cgroup memory usage", f"{shared.cgroup:.1f} MiB each with 5 idle; "
                            f"{single.cgroup:.1f} MiB alone", "–"))
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
        "## Network",
        "",
        "The cost of a sandbox's network: creates in each mode, interleaved, each against the",
        "same create without any network. A sandbox with internet gets a network namespace, a",
        "veth pair into the bridge (one netlink request) and an address; an egress policy adds",
        "one nftables transaction (its chain, sets and map element) before the sandbox starts.",
        "Then the egress proxy (`bench/egress.py`): downloads from a web server of the bench's",
        "own, in a network namespace, by a sandbox whose policy has a domain rule (its port-80",
        "connections go through the proxy) and by one whose policy has addresses only (straight",
        "through the kernel), interleaved. The server runs without the bandwidth cap here",
        "(`HUTCH_EGRESS_RATE_MBIT=0`; under the default 1000 Mbit/s both ways run at the cap). On",
        "two cores the download's sender, the proxy and the receiver share two CPUs; the proxy's",
        "relay is splice(2) in the kernel, nearly all of its time system time.",
        "",
        "| measure | result | against no network, or target |",
        "|---|---|---|",
        *[f"| {a} | {b_} | {c} |" for a, b_, c in net_rows],
        "",
        "## Templates of your own",
        "",
        "A two-step template built through `POST /templates`, then built again unchanged (every",
        "step a cache hit); snapshots of a sandbox that wrote 1 GiB of random data (its processes",
        "frozen while its writable layer is copied); creates from such a snapshot interleaved",
        "with creates from `base`.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        *[f"| {a} | {b_} | {c} |" for a, b_, c in tpl_rows],
        "",
        "## Code interpreter",
        "",
        "Sandboxes of the `code-interpreter` template, measured through the interpreter's",
        "`POST /execute` on port 49999 as `run_code` sends it, without any warm pool. Idle memory is",
        "taken after one `run_code` and 3 s of quiet.",
        "",
        "| measure | result | target |",
        "|---|---|---|",
        *[f"| {a} | {b_} | {c} |" for a, b_, c in ci_rows],
        "",
        "A warm `run_code` is the same two HTTP hops (client → server → the interpreter's socket),",
        "then the interpreter's exchange with the kernel over ZeroMQ: the execute request on the",
        "shell channel, the outputs on IOPub until the kernel reports itself idle. The interpreter",
        "starts the default Python kernel as the sandbox starts, so the first `run_code` after a",
        "create waits only for what is left of that start. In memory, *init + agent* is the same",
        "pair as in any sandbox, *interpreter* the Jupyter-client server, *kernel* the IPython",
        "kernel of the default context. Most of the last two is their own heap (the objects of",
        "the modules they import: jupyter_client and zmq; IPython and ipykernel), which PSS cannot",
        "split between sandboxes the way it splits the template's mapped files.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
