"""hutch's benchmark suite: one command, numbers written to docs/benchmarks.md.

    bash scripts/install --bench      # once: the test extras, bubblewrap and podman
    .venv/bin/python bench/run.py [--quick] [--out FILE] [--sections core,load,...]

It starts its own server (instance `hutchb`, its own subnet and data dir, the test suite's
built templates reused), measures through the HTTP API exactly what a client sees, and
measures the floor beside it in the same run: fork+exec of /bin/true and a bare `runc run` of
a bundle made by hutch's own runtime code. Sandboxes of the `code-interpreter` template are
measured the same way, through the interpreter's `/execute` as `run_code` sends it. Load
(bursts, the warm pool, sustained creates, idle capacity: bench/load.py) runs on servers of
its own, one at a time, and the alternatives a user would pick (bwrap, podman, Jupyter Kernel
Gateway: bench/peers.py) are measured after them. Nothing here is asserted; the numbers are
reported. With --sections, only those sections run and their parts of the document replace
the same parts of the existing one; the rest of it is kept.
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
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

import httpx

from hutch.protocol import EnvelopeDecoder, encode_envelope
from hutch.runtime import cgroup

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contexts  # noqa: E402 - kernels after the first (the kernels' zygote), in the code section
import egress  # noqa: E402 - the egress proxy's section, a module of its own
import load  # noqa: E402 - bursts, the warm pool, sustained creates, capacity
import peers  # noqa: E402 - the alternatives, side by side
import templates  # noqa: E402 - templates of your own, likewise
from floor import template_rootfs  # noqa: E402

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


def server_timing(response) -> dict[str, float]:
    """A create answer's `Server-Timing`: milliseconds by step."""
    steps = {}
    for part in response.headers.get("Server-Timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            steps[name] = float(dur)
    return steps


#: A cold create's steps as the core section reports them (Server-Timing names, see api.md).
CREATE_STEPS = (
    ("runtime_disk_copy", "writable layer: image copy"), ("runtime_disk_mount", "its mount"),
    ("runtime_overlay", "the overlay"), ("runtime_network", "network (meanwhile)"),
    ("runtime_bundle", "bundle"), ("runtime_oci_run", "`runc run`"),
    ("runtime_agent_fork", "agent forked in"), ("agent", "agent's `/init`"),
    ("total", "total"))


class Bench:
    def __init__(self, url: str, key: str, server_pid: int | None = None) -> None:
        self.url = url
        self.server_pid = server_pid      # whose CPU the load section splits out, if known
        self.api = httpx.Client(base_url=url, headers={"X-API-KEY": key}, timeout=120)
        self.data = httpx.Client(base_url=url, timeout=120)

    def create(self, **body) -> dict:
        r = self.api.post("/sandboxes", json={"templateID": "base", **body})
        r.raise_for_status()
        self.last_timing = server_timing(r)
        return r.json()

    def kill(self, sbx: dict) -> None:
        self.api.delete(f"/sandboxes/{sbx['sandboxID']}")

    def headers(self, sbx: dict, port: str = AGENT_PORT) -> dict:
        h = {"E2b-Sandbox-Id": sbx["sandboxID"], "E2b-Sandbox-Port": port}
        if sbx.get("envdAccessToken"):
            h["X-Access-Token"] = sbx["envdAccessToken"]
        return h

    def run(self, sbx: dict, cmd: str, *, argv: list | None = None) -> bytes:
        """Run a command through the agent as the sandbox's default user, the way
        `commands.run` sends it (`bash -l -c cmd`), or `argv` directly (no shell, as
        `sbx.exec`); return its output once the stream has ended."""
        return self._start(sbx, argv or ["/bin/bash", "-l", "-c", cmd])[0]

    def first_output_at(self, sbx: dict, cmd: str) -> float:
        """Run `cmd` as `run` does; return when (`perf_counter`) its first output was read."""
        at = self._start(sbx, ["/bin/bash", "-l", "-c", cmd])[1]
        if at is None:
            raise RuntimeError(f"{cmd!r} printed nothing")
        return at

    def _start(self, sbx: dict, argv: list) -> tuple[bytes, float | None]:
        """The output, and when its first piece was read. The body is read to its own end,
        past the end-stream message, as the SDKs read it: a response left unfinished would
        close its connection, and every call would pay for a new one."""
        body = encode_envelope({"process": {"cmd": argv[0], "args": argv[1:]}})
        headers = {**self.headers(sbx), "Content-Type": "application/connect+json",
                   "Connect-Protocol-Version": "1"}
        out, first = b"", None
        with self.data.stream("POST", "/process.Process/Start", content=body, headers=headers) as r:
            decoder = EnvelopeDecoder()
            for chunk in r.iter_raw():
                for env in decoder.feed(chunk):
                    event = env.json().get("event", {})
                    if "data" in event:
                        if first is None:
                            first = time.perf_counter()
                        out += base64.b64decode(event["data"].get("stdout", ""))
        return out, first

    interpreter_port = INTERPRETER_PORT

    def new_context(self, sbx: dict, language: str = "python") -> str:
        """`POST /contexts` to the sandbox's code interpreter; the new context's id."""
        r = self.data.post("/contexts", json={"language": language},
                           headers=self.headers(sbx, INTERPRETER_PORT))
        r.raise_for_status()
        return r.json()["id"]

    def run_code(self, sbx: dict, code: str, context: str | None = None) -> dict[str, float]:
        """`POST /execute` to the sandbox's code interpreter, as `run_code` sends it, read to
        the stream's end; return when each line type was first read (`perf_counter`), so one
        call can be timed both to its result and to its end. A failed execution raises: its
        time would not be the time of `code`."""
        seen: dict[str, float] = {}
        body = {"code": code, **({"context_id": context} if context else {})}
        with self.data.stream("POST", "/execute", json=body,
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


def measure_create_to_first_output(b: Bench, n: int, steps: list | None = None,
                                   **body) -> list[float]:
    """create → first output, `n` times; each create's Server-Timing goes to `steps`."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        sbx = b.create(**body)
        if steps is not None:
            steps.append(b.last_timing)
        try:
            times.append((b.first_output_at(sbx, "echo hi") - t0) * 1000)
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


def measure_files(b: Bench, sbx: dict, mib: int, repeat: int = 3) -> tuple[float, float]:
    """MB/s of a `mib` MiB write and of its read back, each the median of `repeat` transfers:
    one transfer takes a fraction of a second, and a single one is at the mercy of whatever
    else the host does in that moment."""
    payload = os.urandom(1024 * 1024) * mib
    writes, reads = [], []
    for _ in range(repeat):
        w, r = _transfer(b, sbx, payload)
        writes.append(w)
        reads.append(r)
    return statistics.median(writes), statistics.median(reads)


def _transfer(b: Bench, sbx: dict, payload: bytes) -> tuple[float, float]:
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
    """Which part of a sandbox a process is, from its command line (the init's carries the
    agent's, or the waiting process's when the agent was forked in): memory is cut part by
    part, so it is reported part by part."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"hutch.agent.interpreter" in argv:
        return "interpreter"
    if any(b"ipykernel" in arg or b"kernel_zygote" in arg for arg in argv):
        # the launcher, or its -c start-up line; the kernels' zygote and its forks
        return "kernel"
    if b"hutch.agent" in argv or argv[0] in (b"/.hutch-init", b"/run/hutch/hutch-pause"):
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


def wait_gone(sandbox_id: str, timeout: float = 5.0) -> None:
    """Until no mount, netns, cgroup or process of the sandbox is left (at most ``timeout``)."""
    deadline = time.perf_counter() + timeout
    while host_objects(sandbox_id) and time.perf_counter() < deadline:
        time.sleep(0.001)


def measure_kill(b: Bench, n: int) -> list[float]:
    """DELETE, then wait until no mount, netns, cgroup or process of the sandbox is left."""
    times = []
    for _ in range(n):
        sbx = b.create()
        b.run(sbx, "true")
        t0 = time.perf_counter()
        b.kill(sbx)
        wait_gone(sbx["sandboxID"])
        times.append((time.perf_counter() - t0) * 1000)
        if host_objects(sbx["sandboxID"]):
            raise RuntimeError(f"sandbox {sbx['sandboxID']} left {host_objects(sbx['sandboxID'])} behind")
    return times


def measure_cold_cpu(b: Bench, server_pid: int, n: int) -> dict[str, float]:
    """Where the host's CPU goes over one cold create → first output → kill (until every
    kernel object is gone), in ms per sandbox: the server itself, the processes it starts
    (the OCI runtime's own process, nft, the user-namespace limits' helper), the sandbox's
    cgroup (the init, the agent's start, the command) and the rest of the host (kernel threads doing namespace,
    mount and network teardown, and whatever else runs on the machine)."""
    sums = dict.fromkeys(("server", "its child processes", "inside the sandbox",
                          "the rest of the host", "total"), 0.0)
    for _ in range(n):
        time.sleep(0.5)
        busy0, (self0, kids0) = load.cpu_busy_seconds(), load.process_cpu_seconds(server_pid)
        sbx = b.create()
        b.run(sbx, "true")
        inside = cgroup.stats(INSTANCE, sbx["sandboxID"])["cpu_ns"] / 1e9
        b.kill(sbx)
        wait_gone(sbx["sandboxID"])
        time.sleep(0.2)                  # deferred kernel work (namespace cleanup) runs now
        busy1, (self1, kids1) = load.cpu_busy_seconds(), load.process_cpu_seconds(server_pid)
        total = busy1 - busy0
        parts = {"server": self1 - self0, "its child processes": kids1 - kids0,
                 "inside the sandbox": inside}
        parts["the rest of the host"] = max(0.0, total - sum(parts.values()))
        parts["total"] = total
        for k, v in parts.items():
            sums[k] += v * 1000 / n
    return sums


def measure_fork_exec(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def measure_bare_runc(n: int) -> tuple[list[float], list[float]] | str:
    """`runc run` of the same kind of bundle hutch makes, doing `true`: the OCI floor; and,
    interleaved with it, the same bundle without its seccomp profile (what runc's compiling
    of the profile on every start costs)."""
    try:
        from floor import bare_runc_bundle  # built from the runtime's own functions
    except ImportError as exc:
        return f"unavailable ({exc})"
    runc = shutil.which("runc")
    times: tuple[list[float], list[float]] = ([], [])
    with tempfile.TemporaryDirectory(prefix="hutch-bench-") as tmp:
        bundle = bare_runc_bundle(Path(tmp), TEMPLATES_DIR)
        config = json.loads((bundle / "config.json").read_text())
        plain = dict(config, linux={k: v for k, v in config["linux"].items() if k != "seccomp"})
        for i in range(n):
            for kind, cfg in enumerate((config, plain)):
                (bundle / "config.json").write_text(json.dumps(cfg))
                t0 = time.perf_counter()
                subprocess.run([runc, "--root", f"{tmp}/state", "run", "--bundle", str(bundle),
                                f"benchfloor{kind}-{i}"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[kind].append((time.perf_counter() - t0) * 1000)
    for parent in Path("/sys/fs/cgroup").glob("**/hutchfloor"):  # runc leaves the parent
        for child in sorted(parent.glob("**/"), key=lambda p: -len(p.parts)):
            child.rmdir()
    return times


def start_server(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, str]:
    """Start a server of the bench's instance; `env`: settings of its own (a warm pool, a
    limit lifted). One at a time: each is stopped (and its sandboxes gone) before the next."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, HUTCH_DATA_DIR=str(DATA_DIR), HUTCH_PORT=str(port), HUTCH_HOST="127.0.0.1",
               HUTCH_INSTANCE=INSTANCE, HUTCH_SUBNET=SUBNET, HUTCH_TEMPLATES_DIR=str(TEMPLATES_DIR),
               # No bandwidth cap: the network measures show the path's own cost.
               HUTCH_EGRESS_RATE_MBIT="0", **(env or {}))
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


def print_alone(rows_of: Callable[[Bench], list]) -> None:
    """A bench module run on its own (its `main`): a server of the bench's, the module's
    rows printed from it, the server stopped."""
    proc, url, key = start_server()
    try:
        for row in rows_of(Bench(url, key)):
            print(" | ".join(row))
    finally:
        stop_server(proc)


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}"


SECTIONS = ("core", "network", "templates", "code", "load", "peers")


def table(rows: list[tuple], head: str = "| measure | result | target |") -> list[str]:
    cols = head.count("|") - 1
    return [head, "|" + "---|" * cols, *["| " + " | ".join(r) + " |" for r in rows], ""]


def merge(path: Path, blocks: list[tuple[str, list[str]]]) -> str:
    """The existing document with these blocks in place of the ones of the same heading ("":
    the part before the first `## `); blocks it has not got yet are appended."""
    old: list[tuple[str, list[str]]] = [("", [])]
    text = path.read_text() if path.exists() else ""
    for line in text.splitlines():
        if line.startswith("## "):
            old.append((line, []))
        old[-1][1].append(line)
    new = dict(blocks)
    out = [(h, new.pop(h, lines)) for h, lines in old]
    out += [(h, lines) for h, lines in blocks if h in new]
    for _, lines in out:            # a blank line between blocks, however the old one ended
        if lines and lines[-1] != "":
            lines.append("")
    return "\n".join(line for _, lines in out for line in lines).rstrip("\n") + "\n"


def main_for(section: str) -> None:
    """A section's module run as a script: the suite with only that section."""
    sys.argv.insert(1, f"--sections={section}")
    main()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, of {', '.join(SECTIONS)}; those not run keep their "
                         "part of the existing document")
    args = ap.parse_args()
    chosen = set(args.sections.split(","))
    if not chosen <= set(SECTIONS):
        ap.error(f"unknown sections {sorted(chosen - set(SECTIONS))}")
    n = 5 if args.quick else 50
    rows: list[tuple[str, str, str]] = []
    tpl_rows: list[tuple[str, str, str]] = []
    ci_rows: list[tuple[str, str, str]] = []
    net_rows: list[tuple[str, str, str]] = []
    load_rows: list[tuple[str, str, str]] = []
    hutch: dict[str, list[float] | None] = {}     # this run's numbers the peers are set beside
    cold = None
    proc, url, key = start_server()
    try:
        b = Bench(url, key, proc.pid)
        b.kill(b.create())  # warm the template cache and the server
        if chosen & {"core", "peers"}:
            steps: list[dict[str, float]] = []
            create = hutch["create"] = measure_create_to_first_output(b, n, steps)
            rows.append(("create → first command output", summary(create),
                         "p50 ≤ 50 ms · p99 ≤ 3× p50"))
            parts = [f"{label} {statistics.median(s[name] for s in steps):.1f}"
                     for name, label in CREATE_STEPS if steps and all(name in s for s in steps)]
            rows.append(("… the server's steps of those creates, p50 of each (ms)",
                         ", ".join(parts), "–"))
        if "core" in chosen:
            sbx = b.create()
            try:
                ex = measure_exec(b, sbx, n * 4)
                rows.append(('`commands.run("true")` round trip (`bash -l -c true`)', summary(ex), "p50 ≤ 5 ms"))
                argv = measure_exec(b, sbx, n * 4, argv=["/bin/true"])
                rows.append(('`sbx.exec("/bin/true")` round trip (no shell)', summary(argv), "–"))
                w, r = measure_files(b, sbx, 100)
                rows.append(("100 MiB file write / read (median of 3 each)", f"{w:.0f} MB/s / {r:.0f} MB/s", "≥ 500 MB/s each"))
            finally:
                b.kill(sbx)
            single, shared = measure_idle_memory(b, 10, "base", lambda s: b.run(s, "true"), 1.0)
            cg_text = f"; cgroup usage {shared.cgroup:.1f} MiB" if shared.cgroup is not None else ""
            rows.append(("idle sandbox memory (PSS of init + agent)",
                         f"{shared.total:.1f} MiB each with 10 idle; {single.total:.1f} MiB alone{cg_text}",
                         "≤ 10 MiB"))
            kills = measure_kill(b, max(5, n // 2))
            rows.append(("kill → all kernel objects gone", summary(kills), "≤ 50 ms"))
            cpu = measure_cold_cpu(b, proc.pid, max(5, n // 2))
            rows.append(("host CPU of one cold create → first output → kill, by where it went",
                         ", ".join(f"{k} {v:.0f} ms" for k, v in cpu.items()), "–"))

        if "network" in chosen:
            nets = measure_network_creates(b, max(5, n // 2))
            base_net = pct(nets["no network (`allow_internet_access: false`)"], 50)
            for name, times in nets.items():
                extra = pct(times, 50) - base_net
                net_rows.append((f"create → first output, {name}", summary(times),
                                 f"{extra:+.1f} ms p50 (target ≤ +5 ms)" if extra else "–"))
            net_rows += egress.measure(b, b.run, 2 if args.quick else 15, 20 if args.quick else 100,
                                       pct, summary)

        if "templates" in chosen:
            tpl_rows = templates.measure(b, b.run, 3 if args.quick else 10, pct, summary)

        if chosen & {"code", "peers"}:
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
            hutch["first_run_code"], hutch["run_code"] = total, warm
        if "code" in chosen:
            single, shared = measure_idle_memory(b, 5, CODE_TEMPLATE, lambda s: b.run_code(s, "1+1"), 3.0)
            ci_rows.append(("idle sandbox memory (PSS of all its processes)",
                            f"{shared.total:.1f} MiB each with 5 idle; {single.total:.1f} MiB alone", "≤ 50 MiB"))
            ci_rows.append(("… by process, each with 5 idle", shared.split(), "–"))
            ci_rows.append(("… by process, alone", single.split(), "–"))
            if shared.cgroup is not None and single.cgroup is not None:
                ci_rows.append(("cgroup memory usage", f"{shared.cgroup:.1f} MiB each with 5 idle; "
                                f"{single.cgroup:.1f} MiB alone", "–"))
            ci_rows += contexts.measure(b, CODE_TEMPLATE, 3 if args.quick else 10, pct, summary,
                                        sandbox_pids, pss_mib)

        if "load" in chosen:
            more, cold = load.measure_unpooled(b, args.quick, pct, summary, measure_files,
                                               DATA_DIR)
            load_rows += more
    finally:
        stop_server(proc)

    if "load" in chosen:
        # A server with a warm pool, then one without the sandbox-count limit: each alone, so
        # neither's sandboxes weigh on the other's numbers.
        proc, url, key = start_server(load.pool_env())
        try:
            more, hutch["pooled"] = load.measure_pooled(Bench(url, key, proc.pid), args.quick, pct,
                                                        summary, cold)
            load_rows += more
        finally:
            stop_server(proc)
        proc, url, key = start_server({"HUTCH_POOL": f"{CODE_TEMPLATE}=2"})
        try:
            load_rows += load.measure_pooled_code(Bench(url, key), args.quick, pct, summary,
                                                  CODE_TEMPLATE)
        finally:
            stop_server(proc)
        proc, url, key = start_server(load.capacity_env())
        try:
            load_rows += load.measure_capacity(Bench(url, key), args.quick, pct, sandbox_memory,
                                               CODE_TEMPLATE)
        finally:
            stop_server(proc)

    floors: dict = {}
    if chosen & {"core", "peers"}:
        fork = floors["fork"] = measure_fork_exec(n * 4)
        rows.append(("floor: fork+exec of /bin/true", summary(fork), "–"))
        both = measure_bare_runc(max(5, n // 2))
        runc = floors["runc"] = both[0] if isinstance(both, tuple) else both
        rows.append(("floor: bare `runc run` doing `true`", summary(runc) if isinstance(runc, list) else runc, "–"))
        if isinstance(both, tuple):
            rows.append(("… the same bundle without its seccomp profile (interleaved)",
                         summary(both[1]), "–"))
        ratio = pct(create, 50) / pct(runc, 50) if isinstance(runc, list) else None
    if "peers" in chosen:
        start_rows, code_rows = peers.measure(DATA_DIR, template_rootfs(TEMPLATES_DIR), hutch,
                                              floors, args.quick, pct, summary)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    partial = chosen != set(SECTIONS)
    alone = ([f"_These numbers are from a run of this section alone ({'--quick, ' if args.quick else ''}"
              f"{stamp}, same machine)._", ""] if partial else [])
    blocks: list[tuple[str, list[str]]] = []
    if "core" in chosen:
        # The header's date is the full run's: a run of some sections keeps it (the other
        # sections are still that run's), and this section says when it was run instead.
        run_line = f"Run {stamp} on {machine()}."
        out_path = Path(args.out)
        if partial and out_path.exists():
            run_line = next((line for line in out_path.read_text().splitlines()
                             if line.startswith("Run ")), run_line)
        lines = [
            "# Benchmarks",
            "",
            "Measured by `bench/run.py` through the HTTP API, as a client sees it, without any warm pool",
            "except where a pool is named (the load section).",
            run_line,
            "Regenerate with `.venv/bin/python bench/run.py` (one section: `--sections load`).",
            "",
            *alone,
            *table(rows),
        ]
        if ratio:
            lines.append(f"create → first output is {ratio:.1f}× a bare `runc run` of `true`.")
            lines.append("")
        lines += [
            "Where a create's time goes (the `Server-Timing` header of every create answer has the",
            "breakdown; the table's second row has their medians): `runc run` of the bundle, most of it (the floor",
            "above; runc's compiling of the seccomp profile on every start is the difference between",
            "the two floor rows), then the agent forked in from the server's zygote (two forks, each",
            "copying the pages it writes to, and the agent's confinement: seccomp, Landlock,",
            "capabilities; starting Python and importing the agent inside instead cost about 90 ms",
            "of CPU here), then `/init`. A command's round trip is two HTTP hops",
            "(client → server → agent socket), the spawn as the sandbox user, and the login shell",
            "`commands.run` asks for. Idle memory is counted as PSS, so libraries shared by sandboxes",
            "of one template are split between them; one sandbox alone carries all of them.",
            "",
        ]
        blocks.append(("", lines))
    if "network" in chosen:
        blocks.append(("## Network", [
            "## Network",
            "",
            *alone,
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
            *table(net_rows, "| measure | result | against no network, or target |"),
        ]))
    if "templates" in chosen:
        blocks.append(("## Templates of your own", [
            "## Templates of your own",
            "",
            *alone,
            "A two-step template built through `POST /templates`, then built again unchanged (every",
            "step a cache hit); snapshots of a sandbox that wrote 1 GiB of random data (its processes",
            "frozen while its writable layer is copied); creates from such a snapshot interleaved",
            "with creates from `base`.",
            "",
            *table(tpl_rows),
        ]))
    if "code" in chosen:
        blocks.append(("## Code interpreter", [
            "## Code interpreter",
            "",
            *alone,
            "Sandboxes of the `code-interpreter` template, measured through the interpreter's",
            "`POST /execute` on port 49999 as `run_code` sends it, without any warm pool. Idle memory is",
            "taken after one `run_code` and 3 s of quiet.",
            "",
            *table(ci_rows),
            "A warm `run_code` is the same two HTTP hops (client → server → the interpreter's socket,",
            "served by the agent), then the interpreter's exchange with the kernel in ZeroMQ's wire",
            "protocol, which the agent speaks itself: the execute request on the shell channel, the",
            "outputs on IOPub until the kernel reports itself idle. The agent starts the default",
            "Python kernel on the sandbox's `/init`, so the first `run_code` after a create waits only",
            "for what is left of that start (the kernel's own imports: IPython, ipykernel, zmq,",
            "tornado; the sandbox's processes share its CPU quota). In memory, *init + agent* is the",
            "same pair as in any sandbox, here also serving the code interpreter, *kernel* the IPython",
            "kernel of the default context. Most of the kernel is its own heap (the objects of the",
            "modules it imports: IPython, ipykernel, jupyter_client and zmq), which PSS cannot split",
            "between sandboxes the way it splits the template's mapped files.",
            "",
            "The rows from *a new Python context* on are kernels after the default one",
            "(`bench/contexts.py`), each timed from the request that makes it to the result of its",
            "first `run_code`, in a sandbox whose default kernel is warm. The first of them starts",
            "the kernels' zygote (a process of the template's Python that has made a kernel's",
            "imports: ipykernel, IPython, pyzmq, tornado) and is its first fork; every later kernel,",
            "a restart's and other languages' included, is forked from it and only sets itself up",
            "(its sockets, the shell, the display formatters). The zygote is not started with the",
            "sandbox: the default kernel does not come from it (a zygote in front of it would add",
            "its own start to the first `run_code`), and its memory is held only by sandboxes that",
            "use a second kernel (and by warm-pool ones, which have it started ahead: the load",
            "section's pooled new-context row). A fork shares part of its pages with the zygote (Python's",
            "reference counts write to the objects a process touches, so the rest is copied), and",
            "PSS splits what is shared among them: with a few forks, the zygote has paid for itself.",
            "In the bash rows, bash_kernel drives bash through pexpect, which pauses 50 ms before",
            "each line it sends; hutch's launcher turns the pause off (with it, measured once in a",
            "sandbox, a three-line cell took 207.7 ms and a bash kernel's start 2.45 s).",
            "",
            "The first `run_code` of a cold create would gain only from a zygote outside the",
            "sandbox, forked in the way the agent is: that one would have to run the template's",
            "own Python and packages on the host, outside any sandbox, which hutch does not do.",
            "",
        ]))
    if "load" in chosen:
        found = [line for note in load.limit_notes(load_rows) for line in textwrap.wrap(note, 92)]
        blocks.append((LOAD_HEADING, [LOAD_HEADING, "", *alone, *LOAD_INTRO, "",
                                      *table(load_rows), *LOAD_NOTES, *found, ""]))
    if "peers" in chosen:
        blocks.append((PEERS_HEADING, [
            PEERS_HEADING, "", *alone, *PEERS_INTRO, "",
            *table(start_rows, "| starts `true` | result | hutch cold ÷ this (p50) "
                               "| hutch pooled ÷ this (p50) |"),
            *PEERS_START_NOTES, "",
            *table(code_rows, "| runs `1+1` | result | hutch ÷ this (p50) |"),
            *PEERS_CODE_NOTES, ""]))
    out = Path(args.out)
    text = merge(out, blocks) if partial else "\n".join(l for _, ls in blocks for l in ls)
    out.write_text(text)
    print(text)


LOAD_HEADING = "## Under load: bursts, the warm pool, sustained creates, capacity"
LOAD_INTRO = [
    "`bench/load.py`, on servers of the bench's own, one at a time: one without a pool",
    "(sequential creates, bursts, 1 GiB each way), one with `HUTCH_POOL=base=50` (sequential",
    "creates from the pool; bursts, each started from a full pool; then create → first output →",
    "kill looped by 8 clients), and one with the sandbox-count limit lifted",
    "(`HUTCH_MAX_SANDBOXES`), where idle sandboxes are created 4 at a time, each used once, until",
    f"a create fails, the host's available memory falls below {load.MEM_FLOOR_MIB} MiB (the bench's own",
    "stop: the machine is shared) or the bench's cap (1,000 base, 200 code-interpreter), then",
    "checked on a spread sample and all killed. A burst is that many client threads released at once, their connections already",
    "open; each latency runs from the release to that client's first output, and the burst's",
    "sandboxes are killed only after it. Each create → first output is split where the create's",
    "answer arrives (its `Server-Timing` total is the server's own part). Host CPU per create is",
    "the whole machine's busy time over the measured window divided by the creates: other work",
    "on the machine counts too, and with the pool on, so does its refill. It is split into the",
    "server's (with the processes it ran and reaped: `runc`, `nft`), the bench's own client",
    "threads' and the rest (the sandboxes' processes, the kernel's work, the rest of the host).",
]
LOAD_NOTES = [
    "Where the time goes. A cold create is CPU work: `runc` setting up namespaces, mounts,",
    "cgroups and the seccomp filter, then the agent, forked into the sandbox from the server's",
    "zygote in a few milliseconds (it used to start Python inside: about 90 ms of CPU). The",
    "creates of a burst are all in flight at once and share the cores, so they finish nearly",
    "together: a burst of N takes about N × the host CPU per create ÷ the cores, and most of its",
    "creates wait nearly that long. From the pool, a create is a claim (one `/init` on the agent,",
    "cgroup writes, a store update) and the first output one more HTTP hop to the agent and the",
    "spawn of a login shell; the pool refills once requests pause for 100 ms (or after 3 s),",
    "so a train of creates is served from the pool without its refill taking the CPU. A",
    "burst from the pool is CPU-bound the same way, at the pooled CPU per create (client",
    "threads, server, agents and login shells together). Creates sustained by several clients",
    "empty the pool within seconds and keep it empty (a refill is a cold create, at the same",
    "CPU): the sustained rate is about the cores ÷ the CPU of a cold create. A file",
    "transfer goes client → server → agent over HTTP, relayed by Python at each hop; a write is",
    "fsync'd in the sandbox's own ext4 image before it is acknowledged. An idle sandbox holds,",
    "besides its processes' memory (PSS), kernel objects no process shows: page tables, its",
    "overlay and loop-mounted writable layer, its network namespace and veth pair, its cgroups;",
    "the drop in the host's available memory counts them all, and whatever else the machine did",
    "meanwhile.",
    "",
    "Targets, and what decides them here. This machine's speed changes from one day (or one",
    "virtual machine under it) to the next by up to two times: a bare `runc run`, the floor row,",
    "measured from 22 to 52 ms p50 in runs on 2026-12-03, and creates and round trips move with",
    "it. On its faster days the cold create (≤ 50 ms) and `commands.run` (≤ 3 ms) meet their",
    "targets; on its slower ones they do not. What decides each:",
    "*Create → first output ≤ 50 ms cold*: a bare `runc run` of the same bundle is half of it",
    "or more (the floor rows; a few milliseconds of that is runc compiling the seccomp filter",
    "on every start, from the profile's names: it cannot take a compiled one), and hutch's",
    "writable layer, network, agent fork and two HTTP round trips come on top (the core",
    "section splits them). An OCI runtime that starts in a few milliseconds would take it well",
    "under (crun does elsewhere, but refuses this host's hybrid cgroup layout). From the pool",
    "the wait is a tenth of that. *A burst of 50 with p95 ≤ 100 ms*: the burst's claims and",
    "first commands are CPU work, which two cores finish in about 50 × the host CPU per pooled",
    "create ÷ 2. The row splits that CPU: the server's part is the smallest, and the bench's",
    "client threads and the rest (each agent's claim and command, a login shell per first",
    "command, the kernel's loopback TCP) already exceed the 4 ms per create that 100 ms allows",
    "on two cores; it takes more cores. *50 creates per second sustained*: under a steady",
    "stream the pool stays empty, so each create is a cold one, and with its kill it costs the",
    "host CPU of the core section's CPU row, most of it `runc` and its init (the server's",
    "child processes, and inside the sandbox); two cores give 2 ÷ that per second, and 50/s",
    "takes more cores or a runtime that costs less. *1 GiB written at ≥ 500 MB/s*: a write is",
    "fsync'd into the sandbox's image file before it is answered, so it is never faster than",
    "the host's disk, whose own rate just before is the row under it (this machine's virtual",
    "disk took a 1 GiB fsync'd write at 357 MB/s and at 1.8 GB/s minutes apart).",
    "*`commands.run` p50 ≤ 3 ms*: fork+exec alone is the floor row; hutch adds two HTTP hops in",
    "Python (client → server → agent), the spawn as the sandbox's user (a vfork, the agent's",
    "thread taking the user's ids for that instant) and the login shell (`bash -l`: the",
    "difference between the `commands.run` and exec rows). *The egress proxy at ≥ 0.8 of",
    "direct*: the relay is splice(2), and the proxy spends next to no time in user space; what",
    "it adds is a second TCP connection's work in the kernel, in series with the sender and",
    "the receiver, on the same two cores. How much it moves per splice decides how well the",
    "two connections overlap: with 1 MiB pipes the ratio was 0.60 in a run on a slower day and",
    "0.73 to 0.84 on a faster one, with 64 KiB pipes 0.82 to 0.86 on that faster one (the",
    "ratio here is from one run). Under the default bandwidth cap of 1000 Mbit/s both ways",
    "run at the cap.",
]
PEERS_HEADING = "## Beside the alternatives"
PEERS_INTRO = [
    "`bench/peers.py`, in the same run, after hutch's servers are stopped: what a user would run",
    "instead. `bwrap` (Debian's bubblewrap) runs `/bin/true` in new user, pid, mount, ipc, uts,",
    "net and cgroup namespaces over the base template's root filesystem bound read-only (it maps",
    "one uid where a sandbox maps 65,536, and sets no cgroup limits and no seccomp filter).",
    "`podman run --rm --rootfs` (Debian's podman 4 over runc) runs it over an overlay of the same",
    "root filesystem with the sandboxes' uid range, no network and a private cgroup namespace.",
    "The hutch rows are this run's: a create through the HTTP API, then a command through the",
    "agent until its first output. The ratio columns are hutch's p50 over the row's: how many",
    "times that row's time hutch takes (below 1: hutch is faster).",
]
PEERS_START_NOTES = [
    "Where the time goes: bwrap is one small C process doing a clone with the namespaces, a few",
    "mounts, pivot_root and exec. runc does that and more (the id maps, a cgroup, the seccomp",
    "filter, masked paths, a state directory) in a Go binary that re-executes itself; it is most",
    "of hutch's cold create, to which hutch adds its writable layer, the network, the agent's",
    "start and two HTTP round trips. podman does runc's work plus its own: a container record",
    "in its store, conmon, and the removal `--rm` asks for. A pooled hutch create has all the",
    "start-up done before the request.",
]
PEERS_CODE_NOTES = [
    "Jupyter Kernel Gateway 3 (in a venv of the bench's own, with ipykernel) on loopback:",
    "`POST /api/kernels`, then the kernel's websocket and an `execute_request` of `1+1` in the",
    "Jupyter messaging protocol. A warm round trip ends once both the `execute_reply` and the",
    "kernel's idle status are read, as hutch's `end_of_execution` does. The floor rows drive the",
    "same kernel with jupyter_client directly over ZeroMQ, no gateway and no sandbox. A kernel's",
    "start is the same Python start-up everywhere (ipykernel importing IPython, zmq, tornado);",
    "hutch's first `run_code` waits for the sandbox's create as well, and inside the sandbox the",
    "agent's start and the kernel's share the sandbox's CPU quota (one core by default), where",
    "the gateway's kernel starts alone on the host. The gateway's warm",
    "round trip has a delay of its own: its websocket writes are small and Nagle's algorithm is",
    "on for its socket, so the second message of a reply waits for the client's ACK, which Linux",
    "delays by up to 40 ms (a client forcing quick ACKs, tried once by hand here, saw about",
    "11 ms).",
]


if __name__ == "__main__":
    main()
