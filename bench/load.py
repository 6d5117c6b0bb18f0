"""hutch under load: bursts of concurrent creates, the warm pool on and off, creates sustained
for a minute, large file transfers, and how many idle sandboxes fit on the host.

Concurrent clients are threads, each with its own HTTP connections (opened before the clock
starts), so a burst measures the server, not connection set-up. A burst's latencies are each
client's from the common start to its sandbox's first command output; its sandboxes are
killed only after the whole burst, so kills never overlap the creates measured.

    .venv/bin/python bench/load.py [--quick]      # this section alone, with its own servers
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import httpx

#: Sandboxes the warm pool keeps for the pool-on measures.
POOL_SIZE = 50
#: The bench stops creating idle sandboxes once the host's available memory falls below this,
#: whatever the cap: the machine is shared, and the point is the count, not an OOM.
MEM_FLOOR_MIB = 2048


def pool_env(size: int = POOL_SIZE) -> dict[str, str]:
    """The server's settings for a base pool of `size`."""
    return {"HUTCH_POOL": f"base={size}"}


def capacity_env() -> dict[str, str]:
    """No server-side count limit: the idle-capacity measure looks for the host's own."""
    return {"HUTCH_MAX_SANDBOXES": "100000"}


def clone(b):
    """Another client of the same server with connections of its own, opened already."""
    c = type(b)(b.url, b.api.headers["X-API-KEY"], b.server_pid)
    c.api.get("/health")
    c.data.get("/health")
    return c


def close(c) -> None:
    c.api.close()
    c.data.close()


def cpu_busy_seconds() -> float:
    """CPU time the whole host has spent busy since boot (all cores; not idle, not iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process itself, and of the children it has reaped (with theirs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


class CpuWindow:
    """The host's busy CPU over a stretch of time, and of it the server's (with the processes
    it started and reaped) and this bench process's own (its client threads)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.host = self.server = self.client = 0.0

    def _now(self) -> tuple[float, float, float]:
        server = sum(process_cpu_seconds(self.server_pid)) if self.server_pid else 0.0
        return cpu_busy_seconds(), server, time.process_time()

    def __enter__(self) -> "CpuWindow":
        self._start = self._now()
        return self

    def __exit__(self, *exc) -> None:
        end = self._now()
        self.host += end[0] - self._start[0]
        self.server += end[1] - self._start[1]
        self.client += end[2] - self._start[2]


def disk_write_mb_s(directory: Path, mib: int) -> float:
    """MB/s of writing `mib` MiB of random data to a new file in `directory` and fsync'ing
    it, as the host's own disk does it: the floor under a sandbox's file writes, whose
    writable layer is an image file there (and is fsync'd before a write is answered)."""
    block = os.urandom(1 << 20)
    path = directory / "disk-floor.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(mib):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return mib * 2**20 / (time.perf_counter() - t0) / 1e6


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pool_stats(b, template: str = "base") -> dict | None:
    """The pool's counters from /health (None where the server does not show them)."""
    try:
        body = b.api.get("/health").json()
    except (httpx.HTTPError, ValueError):
        return None
    for pool in body.get("pools", []):
        if pool.get("template") == template:
            return pool
    return None


def wait_pool(b, size: int, timeout: float = 300, template: str = "base") -> int | None:
    """Wait until the pool of `template` holds `size` ready sandboxes; how many it holds at
    the end (None if the server does not say: then a generous guess of the fill time is
    waited out)."""
    deadline = time.monotonic() + timeout
    stats = pool_stats(b, template)
    if stats is None:
        time.sleep(min(timeout, size * 0.5))
        return None
    while stats is not None and stats["ready"] < size and time.monotonic() < deadline:
        time.sleep(0.25)
        stats = pool_stats(b, template)
    time.sleep(1.0)   # let the last start's after-effects (page cache, GC) settle
    return stats["ready"] if stats else None


def kill_all(b, sandboxes: list[dict], workers: int = 8) -> None:
    """Kill every sandbox in the list, `workers` at a time."""
    todo = list(sandboxes)
    lock = threading.Lock()

    def work() -> None:
        c = clone(b)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    sbx = todo.pop()
                try:
                    c.kill(sbx)
                except httpx.HTTPError:
                    pass   # the server's teardown at the end gets it
        finally:
            close(c)

    threads = [threading.Thread(target=work) for _ in range(min(workers, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def create(c, body: dict | None = None) -> tuple[dict, float | None]:
    """A create, as Bench.create, and the server's own time for it (its Server-Timing total)."""
    sbx = c.create(**(body or {}))
    return sbx, c.last_timing.get("total")


class Split:
    """Where each create → first output went: the create's answer (and of it the server's
    own part), then the first output after it."""

    def __init__(self) -> None:
        self.answered: list[float] = []
        self.server: list[float] = []
        self.output: list[float] = []
        self.cpu: CpuWindow | None = None   # the CPU spent over the measured creates
        self.lock = threading.Lock()

    def add(self, t0: float, t1: float, t2: float, server: float | None) -> None:
        with self.lock:
            self.answered.append((t1 - t0) * 1000)
            self.output.append((t2 - t1) * 1000)
            if server is not None:
                self.server.append(server)

    def text(self, pct) -> str:
        if not self.answered:
            return ""
        server = f" (the server's own part {pct(self.server, 50):.1f})" if self.server else ""
        cpu = ""
        if self.cpu is not None and self.cpu.host:
            each = 1000 / len(self.answered)
            cpu = f"; host CPU per create {self.cpu.host * each:.0f} ms"
            if self.cpu.server_pid:
                rest = self.cpu.host - self.cpu.server - self.cpu.client
                cpu += (f" (the server with what it ran {self.cpu.server * each:.1f}, the bench's clients "
                        f"{self.cpu.client * each:.1f}, the rest {max(0.0, rest) * each:.1f})")
        return (f"; p50 of its parts: the create answered {pct(self.answered, 50):.1f} ms"
                f"{server}, then the first output {pct(self.output, 50):.1f} ms{cpu}")


def _error(exc: BaseException) -> str:
    """The failure in a line: the server's message (its last, most specific 240 characters)."""
    if isinstance(exc, httpx.HTTPStatusError):
        try:
            message = str(exc.response.json().get("message"))
        except ValueError:
            message = exc.response.text.strip()
        return f"{exc.response.status_code}, “…{message[-240:]}”" if len(message) > 240 \
            else f"{exc.response.status_code}, “{message}”"
    return f"{type(exc).__name__}: {str(exc)[:240]}"


#: What a limit's message means, for the notes under the table.
LIMIT_NOTES = {
    "session key": (
        "The base count stopped at the kernel's quota of keys per user: runc gives every "
        "sandbox a session keyring of its own, every sandbox's root is the same host uid, and "
        "`kernel.keys.maxkeys` (200 by default) caps that uid's keys, whatever the memory left."),
}


def limit_notes(rows: list[tuple]) -> list[str]:
    return [note for key, note in LIMIT_NOTES.items() if any(key in r[1] for r in rows)]


def burst(b, size: int, split: Split, body: dict | None = None) -> tuple[list[float], list[str]]:
    """`size` clients at once, each create → first output; latencies from the common start."""
    clients = [clone(b) for _ in range(size)]
    go = threading.Event()
    start = [0.0]
    times: list[float] = []
    errors: list[str] = []
    made: list[dict] = []
    lock = threading.Lock()

    def one(c) -> None:
        go.wait()
        try:
            sbx, server = create(c, body)
            t1 = time.perf_counter()
            with lock:
                made.append(sbx)
            t2 = c.first_output_at(sbx, "echo hi")
            split.add(start[0], t1, t2, server)
            with lock:
                times.append((t2 - start[0]) * 1000)
        except Exception as exc:   # noqa: BLE001 - a failed create is a result
            with lock:
                errors.append(_error(exc))

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    try:
        for t in threads:
            t.start()
        time.sleep(0.2)          # every thread waiting at the start line
        split.cpu = split.cpu or CpuWindow(b.server_pid)
        with split.cpu:
            start[0] = time.perf_counter()
            go.set()
            for t in threads:
                t.join()
    finally:
        go.set()
        for t in threads:
            t.join()
        kill_all(b, made)
        for c in clients:
            close(c)
    return times, errors


def bursts(b, size: int, rounds: int, pooled: bool
           ) -> tuple[list[float], list[str], list[int], Split]:
    """`rounds` bursts of `size`; with the pool on, each starts with a full pool. Also how many
    of each burst the pool served (where the server says)."""
    times, errors, served, split = [], [], [], Split()
    for _ in range(rounds):
        before = None
        if pooled:
            wait_pool(b, POOL_SIZE)
            before = pool_stats(b)
        else:
            time.sleep(1.0)      # the previous burst's kills are done with
        t, e = burst(b, size, split)
        times += t
        errors += e
        after = pool_stats(b) if pooled else None
        if before and after:
            served.append(after["hits"] - before["hits"])
    return times, errors, served, split


def sequential(b, n: int) -> tuple[list[float], Split]:
    """create → first output, one after another (with the pool on, the pool refills between)."""
    times, split = [], Split()
    split.cpu = CpuWindow(b.server_pid)
    for _ in range(n):
        with split.cpu:
            t0 = time.perf_counter()
            sbx, server = create(b)
            t1 = time.perf_counter()
            try:
                t2 = b.first_output_at(sbx, "echo hi")
            except BaseException:
                b.kill(sbx)
                raise
        times.append((t2 - t0) * 1000)
        split.add(t0, t1, t2, server)
        b.kill(sbx)
    return times, split


def sustained(b, seconds: float, workers: int) -> dict:
    """`workers` clients, each looping create → first output → kill for `seconds`."""
    deadline = time.perf_counter() + seconds
    t_start = time.perf_counter()
    latencies: list[float] = []
    finished: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        c = clone(b)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    sbx = c.create()
                except Exception as exc:   # noqa: BLE001
                    with lock:
                        errors.append(_error(exc))
                    time.sleep(0.1)
                    continue
                try:
                    t1 = c.first_output_at(sbx, "echo hi")
                finally:
                    c.kill(sbx)
                with lock:
                    latencies.append((t1 - t0) * 1000)
                    finished.append(time.perf_counter() - t_start)
        finally:
            close(c)

    before = pool_stats(b)
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    after = pool_stats(b)
    half = seconds / 2
    out = {"latencies": latencies, "rate": len(finished) / elapsed,
           "rate_second_half": sum(1 for t in finished if t >= half) / max(elapsed - half, 1e-9),
           "errors": errors, "elapsed": elapsed, "count": len(finished)}
    if before and after:
        out["hits"] = after["hits"] - before["hits"]
        out["misses"] = after["misses"] - before["misses"]
    return out


def capacity(b, template: str, cap: int, wake: Callable[[object, dict], object],
             memory: Callable[[object, dict], object], workers: int = 4) -> dict:
    """Create idle sandboxes of `template` (each used once by `wake`) until a create fails,
    the host's available memory falls below MEM_FLOOR_MIB, or `cap`; then measure what they
    hold and check a spread sample still answers. All of them are killed at the end, also
    when interrupted."""
    sandboxes: list[dict] = []
    latencies: list[tuple[int, float]] = []
    stop = threading.Event()
    limit: list[str] = []
    lock = threading.Lock()
    begun = [0]           # creates started, so that concurrent workers stop at the cap
    avail0 = mem_available_mib()
    t_start = time.perf_counter()

    def work() -> None:
        c = clone(b)
        try:
            while not stop.is_set():
                with lock:
                    if begun[0] >= cap:
                        return
                    begun[0] += 1
                if mem_available_mib() < MEM_FLOOR_MIB:
                    with lock:
                        limit.append(f"the bench's own stop: the host's available memory fell "
                                     f"below {MEM_FLOOR_MIB} MiB")
                    stop.set()
                    return
                t0 = time.perf_counter()
                try:
                    sbx = c.create(templateID=template)
                except Exception as exc:   # noqa: BLE001 - the limit is the answer
                    with lock:
                        limit.append(_error(exc))
                    stop.set()
                    return
                with lock:
                    sandboxes.append(sbx)
                try:
                    wake(c, sbx)
                except Exception as exc:   # noqa: BLE001
                    with lock:
                        limit.append(f"a new sandbox did not answer: {_error(exc)}")
                    stop.set()
                    return
                with lock:
                    latencies.append((len(sandboxes), (time.perf_counter() - t0) * 1000))
        finally:
            close(c)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    out: dict = {}
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["fill_seconds"] = time.perf_counter() - t_start
        time.sleep(5.0)    # idle: start-up work done, memory settled
        count = len(sandboxes)
        out["count"] = count
        out["limit"] = limit[0] if limit else None
        out["host_mib_each"] = (avail0 - mem_available_mib()) / count if count else None
        step = max(1, count // 10)
        sample = sandboxes[::step][:10]
        mems = [memory(b, sbx) for sbx in sample]
        out["pss_mib_each"] = sum(m.total for m in mems) / len(mems) if mems else None
        cgs = [m.cgroup for m in mems if m.cgroup is not None]
        out["cgroup_mib_each"] = sum(cgs) / len(cgs) if cgs else None
        answered = 0
        for sbx in sample:
            try:
                wake(b, sbx)
                answered += 1
            except Exception:   # noqa: BLE001 - counted
                pass
        out["sample_answered"] = (answered, len(sample))
        ordered = [t for _, t in sorted(latencies)]
        out["first_latencies"] = ordered[:50]
        out["last_latencies"] = ordered[-50:]
    finally:
        stop.set()
        for t in threads:
            t.join()
        t0 = time.perf_counter()
        kill_all(b, sandboxes)
        out["kill_seconds"] = time.perf_counter() - t0
    return out


# -- the section's rows ------------------------------------------------------------------------


def _spread(values: list[float], pct) -> str:
    return f"p99/p50 {pct(values, 99) / pct(values, 50):.1f}"


def _burst_row(name: str, result: tuple, pct, summary, target: str = "–") -> tuple[str, str, str]:
    times, errors, served, split = result
    text = summary(times) if times else "none finished"
    if served:
        text += f"; the pool served {sum(served)} of {len(times) + len(errors)}"
    text += split.text(pct)
    if errors:
        text += f"; {len(errors)} failed: {errors[0]}"
    return name, text, target


def measure_unpooled(b, quick: bool, pct, summary, measure_files, data_dir: Path
                     ) -> tuple[list, list[float]]:
    """On a server without a pool: sequential creates (cold), bursts of 10 and 50, and 1 GiB
    both ways, with the host's own disk writing as much beside it (`data_dir`: the
    server's). Returns the rows and the sequential times."""
    n = 5 if quick else 50
    rows = []
    cold, split = sequential(b, n)
    rows.append(("create → first command output, sequential, cold (no pool)",
                 summary(cold) + split.text(pct),
                 f"p50 ≤ 50 ms · p99 ≤ 3× p50 ({_spread(cold, pct)})"))
    rows.append(_burst_row("burst of 10 concurrent creates → first output, no pool",
                           bursts(b, 10, 1 if quick else 5, False), pct, summary))
    rows.append(_burst_row("burst of 50 concurrent creates → first output, no pool",
                           bursts(b, 50, 1 if quick else 3, False), pct, summary))
    sbx = b.create()
    try:
        # Once: a transfer of this size is long enough not to need a median, and a second
        # write of it would hold two copies against the default 2 GiB disk while it renames.
        disk = disk_write_mb_s(data_dir, 1024)
        w, r = measure_files(b, sbx, 1024, repeat=1)
    finally:
        b.kill(sbx)
    rows.append(("1 GiB file write / read", f"{w:.0f} MB/s / {r:.0f} MB/s", "≥ 500 MB/s each"))
    rows.append(("… the host's disk just before: 1 GiB written to a file beside the "
                 "sandboxes' and fsync'd", f"{disk:.0f} MB/s", "–"))
    return rows, cold


def measure_pooled(b, quick: bool, pct, summary, cold: list[float] | None
                   ) -> tuple[list, list[float]]:
    """On a server with a base pool of POOL_SIZE: sequential creates, bursts of 10 and 50
    (each from a full pool), then creates sustained for 60 s (15 s with quick)."""
    n = 5 if quick else 50
    rows = []
    ready = wait_pool(b, POOL_SIZE)
    before = pool_stats(b)
    pooled, split = sequential(b, n)
    after = pool_stats(b)
    served = f"; {after['hits'] - before['hits']} of {n} from the pool" if before and after else ""
    rows.append((f"create → first command output, sequential, pool of {POOL_SIZE} "
                 f"(ready at the start: {ready if ready is not None else 'not reported'})",
                 summary(pooled) + served + split.text(pct),
                 f"p50 ≤ 10 ms · p99 ≤ 3× p50 ({_spread(pooled, pct)})"))
    if cold:
        rows.append(("… cold ÷ pooled (p50)", f"{pct(cold, 50) / pct(pooled, 50):.1f}×", "–"))
    rows.append(_burst_row(f"burst of 10 concurrent creates → first output, pool of {POOL_SIZE}",
                           bursts(b, 10, 1 if quick else 5, True), pct, summary))
    rows.append(_burst_row(f"burst of 50 concurrent creates → first output, pool of {POOL_SIZE}",
                           bursts(b, 50, 1 if quick else 3, True), pct, summary, "p95 ≤ 100 ms"))
    wait_pool(b, POOL_SIZE)
    seconds, workers = (15, 8) if quick else (60, 8)
    s = sustained(b, seconds, workers)
    pool = f"; the pool served {s['hits']}, {s['misses']} started cold" if "hits" in s else ""
    errs = f"; {len(s['errors'])} failed: {s['errors'][0]}" if s["errors"] else ""
    rows.append((f"creates sustained for {seconds} s (create → first output → kill, "
                 f"{workers} clients), pool of {POOL_SIZE}",
                 f"{s['rate']:.1f} creates/s ({s['rate_second_half']:.1f}/s in the second half; "
                 f"{s['count']} in {s['elapsed']:.0f} s){pool}{errs}", "≥ 50 creates/s"))
    rows.append(("… each create → first output, meanwhile", summary(s["latencies"]), "–"))
    return rows, pooled


def measure_pooled_code(b, quick: bool, pct, summary, code_template: str) -> list:
    """On a server with a code-interpreter pool of 2: create → the first `run_code("1+1")`
    result, each create from a full pool (its kernel started, the data stack imported)."""
    n = 3 if quick else 10
    first, creates, runs, contexts = [], [], [], []
    for _ in range(n):
        if (wait_pool(b, 2, 600, code_template) or 0) < 2:
            raise RuntimeError(f"the {code_template} pool did not fill in 600 s")
        t0 = time.perf_counter()
        r = b.api.post("/sandboxes", json={"templateID": code_template})
        r.raise_for_status()
        sbx = r.json()
        t1 = time.perf_counter()
        try:
            t2 = b.run_code(sbx, "1+1")["result"]
            # A new context there: its kernel is a fork of the zygote the pool started.
            t3 = time.perf_counter()
            t4 = b.run_code(sbx, "1+1", context=b.new_context(sbx))["result"]
            contexts.append((t4 - t3) * 1e3)
        finally:
            b.kill(sbx)
        first.append((t2 - t0) * 1e3)
        creates.append((t1 - t0) * 1e3)
        runs.append((t2 - t1) * 1e3)
    stats = pool_stats(b, code_template) or {}
    return [(f"create → result of the first `run_code(\"1+1\")`, `{code_template}` pool of 2",
             summary(first) + f"; {stats.get('hits', '?')} of {n} from the pool",
             "≤ 50 ms from the pool"),
            ("… the create alone / the first `run_code` alone",
             f"p50 {pct(creates, 50):.1f} ms / p50 {pct(runs, 50):.1f} ms", "–"),
            ("… then a new context there → result of its first `run_code`", summary(contexts),
             "–")]


def measure_capacity(b, quick: bool, pct, memory: Callable, code_template: str) -> list:
    """Idle base sandboxes until a limit (cap 1000, 50 with quick), then code-interpreter ones
    (cap 200, 5 with quick)."""
    rows = []
    for template, cap, target, wake in (
            ("base", 50 if quick else 1000, "≥ 1,000", lambda c, s: c.run(s, "true")),
            (code_template, 5 if quick else 200, "≥ 200", lambda c, s: c.run_code(s, "1+1"))):
        r = capacity(b, template, cap, wake, memory)
        hit = r["limit"] or f"none before the bench's cap of {cap}"
        ok, of = r["sample_answered"]
        rows.append((f"idle `{template}` sandboxes at once",
                     f"{r['count']} (limit hit: {hit}); {ok} of a spread sample of {of} still "
                     f"answered", target))
        each = []
        if r["host_mib_each"] is not None:
            each.append(f"host available memory {r['host_mib_each']:.1f} MiB less per sandbox")
        if r["pss_mib_each"] is not None:
            each.append(f"PSS {r['pss_mib_each']:.1f} MiB")
        if r["cgroup_mib_each"] is not None:
            each.append(f"cgroup usage {r['cgroup_mib_each']:.1f} MiB")
        rows.append(("… memory per sandbox, all of them idle", "; ".join(each) or "–", "–"))
        if r["first_latencies"]:
            rows.append(("… create (+ one use) p50, the first 50 / the last 50",
                         f"{pct(r['first_latencies'], 50):.0f} ms / "
                         f"{pct(r['last_latencies'], 50):.0f} ms; filled in "
                         f"{r['fill_seconds']:.0f} s, all killed in {r['kill_seconds']:.0f} s",
                         "–"))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run

    run.main_for("load")
