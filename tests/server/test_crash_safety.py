"""Crash safety, "nothing lost": a server of this module's own is killed with SIGKILL at
seeded random points while a client drives a mixed workload, restarted, and checked.

Each round runs a few lanes concurrently (one thread each, each with its own sandboxes):
creates (some with an Idempotency-Key), commands, uploads of a few sizes, downloads, kills and
timeout changes. When the round's seeded operation number is reached, a killer thread shortens
one victim's timeout to a second and SIGKILLs the server while the other lanes are mid-request.
The test waits for the victim's deadline (the server is down meanwhile), starts the server
again on the same port and checks:

(a) what the store lists as running answers a command, and every kernel object of the instance
    (the runtime's list, sandbox dirs, OCI runtime state, cgroups, netns files, per-sandbox nft
    chains, veths) belongs to a listed sandbox: orphans are reaped before the server answers
    its first request (grace period: none);
(b) every create answered 201 has its sandbox, with the `sleep 1000` started in it still
    running, unless an acknowledged kill or timeout ended it;
(c) every acknowledged upload reads back byte-identical; an upload cut off by the crash is
    either complete or absent, and leaves no temporary file behind;
(d) a create retried with its Idempotency-Key gives the sandbox it gave before (or, when the
    first try was cut off, one sandbox: never two); a retried kill answers 204 or 404;
(e) a sandbox whose timeout passed while the server was down is killed by the restart and
    answers GET /sandboxes/{id} with 404 and endReason "timeout".

Then (f): a store that is garbage, empty, or cannot be opened makes `hutch serve` refuse to
start with a message naming the file, and no sandbox is touched.

Everything random comes from one seeded generator (HUTCH_CRASH_SEED, printed); what the kill
interrupts depends on timing, so the checks accept both outcomes for operations in flight.
The server has its own instance, data dir and a /24 near the end of the test subnet.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import (
    STARTUP_TIMEOUT, TEST_DATA_DIR, TEST_INSTANCE, TEST_SUBNET, _server_env, free_port,
    teardown_instance,
)

pytestmark = pytest.mark.timeout(900)

SEED = int(os.environ.get("HUTCH_CRASH_SEED", "20261202"))
INSTANCE = TEST_INSTANCE[:8] + "cr"
SUBNET = str(list(ipaddress.ip_network(TEST_SUBNET).subnets(new_prefix=24))[-2])
DATA_DIR = TEST_DATA_DIR.parent / (TEST_DATA_DIR.name + "-crash")
ROUNDS = 6
LANES = 3
OPS_PER_LANE = 40           # per round; the kill cuts each round short
MAX_PER_LANE = 3            # live sandboxes a lane keeps
SIZES = (0, 1, 4096, 65_543, 1 << 20, 3 << 20)
LIFETIME = 900              # seconds: nothing expires unless the workload says so


class Crash(Exception):
    """The operation was cut off by the kill: its outcome is unknown."""


class ServerProcess:
    """`hutch serve` on a fixed port (sandbox handles outlive restarts), killed at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = DATA_DIR / "server.log"
        self.process: subprocess.Popen | None = None
        self.key = ""

    def spawn(self) -> subprocess.Popen:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        env = _server_env(DATA_DIR, self.port, INSTANCE, SUBNET)
        env["HUTCH_LOG_LEVEL"] = "info"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "hutch", "serve"], env=env,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        return self.process

    def start(self) -> None:
        proc = self.spawn()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hutch serve exited with {proc.returncode}:\n"
                                   f"{self.log_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "hutch serve did not come up"
            time.sleep(0.05)
        self.key = (DATA_DIR / "admin.key").read_text().strip()

    def kill(self) -> None:
        """SIGKILL, by PID: no clean-up code of the server runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-KEY": self.key}, timeout=120)


# -- the host's view ----------------------------------------------------------------------

def _runtime():
    from hutch.server.app import build_runtime
    from hutch.server.config import load
    return build_runtime(load({"HUTCH_DATA_DIR": str(DATA_DIR), "HUTCH_INSTANCE": INSTANCE,
                               "HUTCH_SUBNET": SUBNET}))


def _listdir(path: Path) -> set[str]:
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return set()


def host_objects() -> dict[str, set[str]]:
    """Sandbox ids per kind of kernel object or state this instance holds on the host
    (read directly, not only through the runtime's own list)."""
    from hutch.runtime import cgroup, network
    state = DATA_DIR / "runtime"
    found = {
        "runtime list": set(asyncio.run(_runtime().list())),
        "sandbox dirs": _listdir(state / "sandboxes"),
        "oci state": _listdir(state / "oci"),
        "cgroups": set(cgroup.list_ids(INSTANCE)),
        "netns": set(network.list_netns(INSTANCE)),
    }
    table = subprocess.run(["nft", "list", "table", "inet", INSTANCE], capture_output=True,
                           text=True).stdout
    found["nft chains"] = {line.split()[1][len("egress_"):] for line in table.splitlines()
                           if line.strip().startswith("chain egress_")}
    found["veths"] = {name for name in _listdir(Path("/sys/class/net"))
                      if name.startswith(network.veth_prefix(INSTANCE))}
    return found


def settled_listing(client) -> set[str]:
    """The listed sandboxes once the host agrees with them. A sandbox can expire while this
    looks (its record ends first, its teardown follows in the background), so a difference
    is looked at again for a while: one that persists is a real orphan or a lost sandbox."""
    deadline = time.monotonic() + 10
    while True:
        listed = {s["sandboxID"] for s in client.get("/sandboxes", params={"limit": 1000}).json()}
        try:
            check_host_matches(listed)
            return listed
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def check_host_matches(listed: set[str]) -> None:
    from hutch.runtime import network
    objects = host_objects()
    veths = objects.pop("veths")
    for kind, ids in objects.items():
        assert ids <= listed, f"{kind} of no listed sandbox (orphans): {sorted(ids - listed)}"
    assert listed <= objects["runtime list"], \
        f"listed as running but not on the host: {sorted(listed - objects['runtime list'])}"
    mine = {network.host_ifname(INSTANCE, sid) for sid in listed}
    assert veths <= mine, f"veths of no listed sandbox: {sorted(veths - mine)}"


# -- the ledger of what the server acknowledged ---------------------------------------------

@dataclass
class Tracked:
    sid: str
    idem: str | None = None
    bg_pid: int | None = None
    ended: str | None = None               # "killed" / "timeout": acknowledged end
    doubtful_end: bool = False             # a kill or short timeout cut off by the crash
    files: dict[str, bytes] = field(default_factory=dict)      # acknowledged uploads
    doubtful: dict[str, bytes] = field(default_factory=dict)   # uploads cut off

    @property
    def live(self) -> bool:
        return self.ended is None and not self.doubtful_end


@dataclass
class Ledger:
    sandboxes: dict[str, Tracked] = field(default_factory=dict)
    doubtful_creates: list[str] = field(default_factory=list)  # idempotency keys
    doubtful_kills: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)        # failures before the kill
    ops: int = 0
    cut_off: dict[str, int] = field(default_factory=dict)       # operations in flight, by kind
    lock: threading.Lock = field(default_factory=threading.Lock)


class Round:
    """One round: lanes drive the workload until the killer strikes."""

    def __init__(self, server: ServerProcess, ledger: Ledger, number: int,
                 rng: random.Random) -> None:
        self.server = server
        self.ledger = ledger
        self.number = number
        self.kill_at = rng.randint(LANES * OPS_PER_LANE // 3, LANES * OPS_PER_LANE * 4 // 5)
        self.kill_delay = rng.uniform(0, 0.08)
        self.lane_seeds = [rng.getrandbits(32) for _ in range(LANES)]
        self.started = 0
        self.killed = threading.Event()
        self.trigger = threading.Event()
        self.victim: str | None = None
        self.victim_deadline = 0.0
        self.handles: dict[str, Sandbox] = {}

    # the operations ------------------------------------------------------------------------

    def _guard(self, what: str, call):
        """Run one operation; an error after the kill means "cut off", before it a failure."""
        try:
            return call()
        except Exception as exc:
            if self.killed.is_set():
                with self.ledger.lock:
                    self.ledger.cut_off[what] = self.ledger.cut_off.get(what, 0) + 1
                raise Crash(what) from exc
            with self.ledger.lock:
                self.ledger.unexpected.append(f"round {self.number}: {what}: {exc!r}")
            raise

    def _count(self) -> None:
        with self.ledger.lock:
            self.started += 1
            self.ledger.ops += 1
            if self.started == self.kill_at:
                self.trigger.set()

    def handle(self, sid: str) -> Sandbox:
        if sid not in self.handles:
            self.handles[sid] = Sandbox.connect(sid)
        return self.handles[sid]

    def create(self, lane: list[Tracked], rng: random.Random) -> None:
        idem = f"crash-{SEED}-{self.number}-{rng.getrandbits(48):x}" if rng.random() < 0.5 \
            else None
        body = {"templateID": "base", "timeout": LIFETIME,
                "metadata": {"crash": str(SEED), **({"idem": idem} if idem else {})}}
        if rng.random() < 0.3:      # a sandbox with an egress policy: it has an nft chain
            body["network"] = {"denyOut": ["198.51.100.0/24"]}
        headers = {"Idempotency-Key": idem} if idem else {}

        def post():
            with self.server.client() as c:
                r = c.post("/sandboxes", json=body, headers=headers)
            assert r.status_code == 201, (r.status_code, r.text)
            return r.json()["sandboxID"]
        try:
            sid = self._guard("create", post)
        except Crash:
            if idem:
                self.ledger.doubtful_creates.append(idem)
            return
        tracked = Tracked(sid, idem)
        with self.ledger.lock:
            self.ledger.sandboxes[sid] = tracked
        lane.append(tracked)
        try:
            bg = self._guard("background sleep",
                             lambda: self.handle(sid).commands.run("sleep 1000",
                                                                   background=True))
            tracked.bg_pid = bg.pid
        except Crash:
            pass

    def run(self, t: Tracked, rng: random.Random) -> None:
        word = f"w{rng.getrandbits(32):x}"

        def go():
            out = self.handle(t.sid).commands.run(f"echo {word}")
            assert out.stdout == word + "\n", out
        self._guard("commands.run", go)

    def write(self, t: Tracked, rng: random.Random) -> None:
        path = f"/home/user/f{self.number}-{len(t.files) + len(t.doubtful)}-" \
               f"{rng.getrandbits(24):x}.bin"
        data = rng.randbytes(rng.choice(SIZES))
        try:
            self._guard("files.write", lambda: self.handle(t.sid).files.write(path, data))
            t.files[path] = data
        except Crash:
            t.doubtful[path] = data

    def read(self, t: Tracked, rng: random.Random) -> None:
        if not t.files:
            return self.run(t, rng)
        path = rng.choice(sorted(t.files))

        def go():
            got = self.handle(t.sid).files.read(path, format="bytes")
            assert bytes(got) == t.files[path], f"{path} differs before any crash"
        self._guard("files.read", go)

    def kill(self, t: Tracked) -> None:
        def go():
            with self.server.client() as c:
                r = c.delete(f"/sandboxes/{t.sid}")
            assert r.status_code == 204, (r.status_code, r.text)
        try:
            self._guard("kill", go)
            t.ended = "killed"
        except Crash:
            t.doubtful_end = True
            self.ledger.doubtful_kills.append(t.sid)

    def set_timeout(self, t: Tracked, rng: random.Random) -> None:
        seconds = 2 if rng.random() < 0.3 else rng.randint(LIFETIME // 2, LIFETIME)

        def go():
            with self.server.client() as c:
                r = c.post(f"/sandboxes/{t.sid}/timeout", json={"timeout": seconds})
            assert r.status_code == 204, (r.status_code, r.text)
        try:
            self._guard("set_timeout", go)
            if seconds == 2:
                t.ended = "timeout"
        except Crash:
            if seconds == 2:
                t.doubtful_end = True

    # the drivers -----------------------------------------------------------------------

    def lane(self, index: int, sandboxes: list[Tracked]) -> None:
        rng = random.Random(self.lane_seeds[index])
        try:
            for _ in range(OPS_PER_LANE):
                if self.killed.is_set():
                    return
                live = [t for t in sandboxes if t.live]
                choice = rng.choices(("create", "run", "write", "read", "kill", "timeout"),
                                     (8, 30, 25, 20, 7, 10))[0]
                if not live or (choice == "create" and len(live) < MAX_PER_LANE):
                    self._count()
                    self.create(sandboxes, rng)
                    continue
                t = rng.choice(live)
                self._count()
                if choice in ("run", "create"):
                    self.run(t, rng)
                elif choice == "write":
                    self.write(t, rng)
                elif choice == "read":
                    self.read(t, rng)
                elif choice == "kill" and len(live) > 1:
                    self.kill(t)
                elif choice in ("timeout", "kill"):
                    self.set_timeout(t, rng)
        except Crash:
            return
        except Exception:
            return      # recorded in ledger.unexpected
        finally:
            if not self.killed.is_set():
                self.trigger.set()     # ran out of operations: strike now

    def killer(self) -> None:
        self.trigger.wait()
        # The victim's timeout passes while the server is down: the restart must expire it.
        with self.server.client() as c:
            r = c.post(f"/sandboxes/{self.victim}/timeout", json={"timeout": 1})
        assert r.status_code == 204, r.text
        self.victim_deadline = time.monotonic() + 1
        self.killed.set()
        time.sleep(self.kill_delay)
        self.server.kill()

    def drive(self, lanes: list[list[Tracked]]) -> None:
        with self.server.client() as c:
            r = c.post("/sandboxes", json={"templateID": "base", "timeout": LIFETIME,
                                           "metadata": {"crash": str(SEED)}})
        assert r.status_code == 201, r.text
        self.victim = r.json()["sandboxID"]
        self.ledger.sandboxes[self.victim] = Tracked(self.victim, ended="timeout")
        threads = [threading.Thread(target=self.lane, args=(i, lanes[i]), daemon=True)
                   for i in range(LANES)]
        killer = threading.Thread(target=self.killer, daemon=True)
        killer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        killer.join(120)
        assert self.server.process.poll() is not None, "the killer did not strike"


# -- the checks ------------------------------------------------------------------------

def check_round(server: ServerProcess, ledger: Ledger, rnd: Round, log_from: int) -> None:
    assert not ledger.unexpected, "\n".join(ledger.unexpected)
    with server.client() as c:
        # (a) the store and the host agree; what is listed answers.
        listed = settled_listing(c)
        for sid in sorted(listed):
            assert Sandbox.connect(sid).commands.run("echo alive").stdout == "alive\n", sid

        # (e) the victim expired while the server was down, and the restart killed it.
        log = server.log_text()[log_from:]
        expired_line = next((line for line in log.splitlines()
                             if "reconcile: expired" in line), "")
        assert rnd.victim in expired_line, f"restart did not expire {rnd.victim}:\n{log[-3000:]}"
        for t in ledger.sandboxes.values():
            if t.ended is None:
                continue
            assert t.sid not in listed, f"{t.sid} ended ({t.ended}) but is listed"
            r = c.get(f"/sandboxes/{t.sid}")
            assert r.status_code == 404, r.text
            assert r.json()["endReason"] == t.ended, (t.sid, r.json())

        # (b) and (c): acknowledged creates and uploads survived.
        for t in ledger.sandboxes.values():
            if t.ended is not None:
                continue
            if t.doubtful_end and t.sid not in listed:
                continue
            assert t.sid in listed, f"{t.sid} was created (201) but is gone after the crash"
            sbx = Sandbox.connect(t.sid)
            if t.bg_pid is not None:
                assert t.bg_pid in {p.pid for p in sbx.commands.list()}, \
                    f"background sleep of {t.sid} did not survive"
            for path, data in t.files.items():
                assert bytes(sbx.files.read(path, format="bytes")) == data, \
                    f"{t.sid}:{path} ({len(data)} bytes) differs after the crash"
            for path, data in list(t.doubtful.items()):
                if sbx.files.exists(path):
                    got = bytes(sbx.files.read(path, format="bytes"))
                    assert got == data, f"{t.sid}:{path}: cut-off upload is partial " \
                                        f"({len(got)} of {len(data)} bytes)"
                    t.files[path] = data
                del t.doubtful[path]
            names = sbx.commands.run("ls -a /home/user").stdout.split()
            from hutch.agent.filesystem import UPLOAD_MARKER
            assert not [n for n in names if UPLOAD_MARKER in n], \
                f"temporary upload files left in {t.sid}: {names}"

        # (d) retried creates and kills.
        for t in list(ledger.sandboxes.values()):
            if t.idem is None or t.ended is not None or t.sid not in listed:
                continue
            r = c.post("/sandboxes", json={"templateID": "base", "timeout": LIFETIME,
                                           "metadata": {"idem": t.idem}},
                       headers={"Idempotency-Key": t.idem})
            assert r.status_code == 201 and r.json()["sandboxID"] == t.sid, \
                f"retry of {t.idem} gave {r.status_code} {r.text}, not {t.sid}"
        for idem in ledger.doubtful_creates:
            r = c.post("/sandboxes", json={"templateID": "base", "timeout": LIFETIME,
                                           "metadata": {"crash": str(SEED), "idem": idem}},
                       headers={"Idempotency-Key": idem})
            assert r.status_code == 201, f"retry of cut-off create {idem}: {r.text}"
            again = c.post("/sandboxes", json={"templateID": "base"},
                           headers={"Idempotency-Key": idem})
            assert again.status_code == 201 and \
                again.json()["sandboxID"] == r.json()["sandboxID"], again.text
            same = c.get("/sandboxes", params={"metadata": f"idem={idem}"}).json()
            assert [s["sandboxID"] for s in same] == [r.json()["sandboxID"]], \
                f"create {idem} retried after the crash made {len(same)} sandboxes"
            sid = r.json()["sandboxID"]
            ledger.sandboxes.setdefault(sid, Tracked(sid, idem))
        ledger.doubtful_creates.clear()
        for sid in ledger.doubtful_kills:
            r = c.delete(f"/sandboxes/{sid}")
            assert r.status_code in (204, 404), f"retried kill of {sid}: {r.status_code} {r.text}"
            ledger.sandboxes[sid].ended, ledger.sandboxes[sid].doubtful_end = "killed", False
        ledger.doubtful_kills.clear()
        for t in ledger.sandboxes.values():
            if t.ended == "killed":
                r = c.delete(f"/sandboxes/{t.sid}")
                assert r.status_code == 404, f"kill of killed {t.sid}: {r.status_code}"
            elif t.doubtful_end:
                # A short timeout cut off by the crash: it either took or did not.
                info = c.get(f"/sandboxes/{t.sid}")
                if info.status_code == 404:
                    t.ended = info.json()["endReason"]
                else:
                    assert info.status_code == 200, info.text
                t.doubtful_end = False


# -- the module's server -------------------------------------------------------------------

@pytest.fixture(scope="module")
def crash_server(monkeypatch_module):
    teardown_instance(DATA_DIR, INSTANCE, SUBNET)
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    server = ServerProcess()
    server.start()
    for k, v in {"E2B_API_URL": server.url, "E2B_SANDBOX_URL": server.url,
                 "E2B_API_KEY": server.key}.items():
        monkeypatch_module.setenv(k, v)
    monkeypatch_module.delenv("E2B_DEBUG", raising=False)
    monkeypatch_module.delenv("E2B_DOMAIN", raising=False)
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            try:
                with server.client() as c:
                    for s in c.get("/sandboxes", params={"limit": 1000}).json():
                        c.delete(f"/sandboxes/{s['sandboxID']}")
            except httpx.HTTPError:
                pass
        server.stop()
        teardown_instance(DATA_DIR, INSTANCE, SUBNET)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_sigkill_at_random_points_loses_nothing(crash_server):
    print(f"crash-safety seed: {SEED} (HUTCH_CRASH_SEED reproduces it)")
    rng = random.Random(SEED)
    ledger = Ledger()
    lanes: list[list[Tracked]] = [[] for _ in range(LANES)]
    for number in range(ROUNDS):
        rnd = Round(crash_server, ledger, number, rng)
        rnd.drive(lanes)
        print(f"round {number}: killed after operation {rnd.kill_at} "
              f"(+{rnd.kill_delay * 1e3:.0f} ms), {ledger.ops} operations so far")
        # The server is down until the victim's deadline has passed.
        time.sleep(max(0.0, rnd.victim_deadline - time.monotonic()) + 0.5)
        log_from = len(crash_server.log_text())
        crash_server.start()
        check_round(crash_server, ledger, rnd, log_from)
        reconciled = [line.split("reconcile: ", 1)[1].split(":")[0]
                      for line in crash_server.log_text()[log_from:].splitlines()
                      if "reconcile: " in line]
        print(f"  restart: {', '.join(reconciled)}")
    print(f"cut off by the kills: {ledger.cut_off}; sandboxes tracked: "
          f"{len(ledger.sandboxes)}, files checked: "
          f"{sum(len(t.files) for t in ledger.sandboxes.values())}")
    assert ledger.ops >= 150, f"only {ledger.ops} operations ran"


def test_create_cut_off_by_a_crash_can_be_retried(crash_server):
    """A create whose server died half-way (its record still ``creating``, with the client's
    Idempotency-Key) is recorded as failed by the restart; the client's retry with the same
    key gets one new sandbox, not a 409 naming the dead one."""
    from hutch.server.store import SandboxRecord, Store
    idem = f"cut-{SEED}"
    crash_server.kill()
    store = Store(DATA_DIR / "hutch.db")
    now = time.time()
    half = "half" + uuid.uuid4().hex[:16]
    store.insert(SandboxRecord(id=half, template="base", state="creating", created_at=now,
                               end_at=now + 600, cpu=1, memory_mb=256, disk_mb=256, pids=64,
                               network="none", owner="admin", idempotency_key=f"admin/{idem}"))
    store.close()
    crash_server.start()
    with crash_server.client() as c:
        gone = c.get(f"/sandboxes/{half}")
        assert gone.status_code == 404
        assert gone.json()["endReason"] == "server stopped during create", gone.json()
        body = {"templateID": "base", "timeout": LIFETIME, "metadata": {"idem": idem}}
        first = c.post("/sandboxes", json=body, headers={"Idempotency-Key": idem})
        assert first.status_code == 201, first.text
        again = c.post("/sandboxes", json=body, headers={"Idempotency-Key": idem})
        assert again.status_code == 201, again.text
        sid = first.json()["sandboxID"]
        assert again.json()["sandboxID"] == sid != half
        listed = c.get("/sandboxes", params={"metadata": f"idem={idem}"}).json()
        assert [s["sandboxID"] for s in listed] == [sid]
        assert c.delete(f"/sandboxes/{sid}").status_code == 204


def _store_files() -> list[Path]:
    return [DATA_DIR / n for n in ("hutch.db", "hutch.db-wal", "hutch.db-shm")]


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing", "unopenable"])
def test_unreadable_store_refuses_to_start_and_kills_nothing(crash_server, damage):
    with crash_server.client() as c:
        r = c.post("/sandboxes", json={"templateID": "base", "timeout": LIFETIME})
        assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    bg = Sandbox.connect(sid).commands.run("sleep 1000", background=True)
    crash_server.kill()
    before = host_objects()
    assert sid in before["runtime list"]
    saved = DATA_DIR / "saved-store"
    shutil.rmtree(saved, ignore_errors=True)
    saved.mkdir()
    for f in _store_files():
        if f.exists():
            f.rename(saved / f.name)
    db = _store_files()[0]
    if damage == "garbage":
        db.write_bytes(random.Random(SEED).randbytes(64 << 10))
        expect = "cannot read the sandbox store"
    elif damage == "empty":
        db.write_bytes(b"")
        expect = "is missing or empty"
    elif damage == "missing":
        expect = "is missing or empty"
    else:
        db.mkdir()          # opening fails as it would without permission to read the file
        expect = "cannot read the sandbox store"
    try:
        log_from = len(crash_server.log_text())
        proc = crash_server.spawn()
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            crash_server.kill()
            code = 0
        assert code != 0, "hutch serve started on a damaged store"
        out = crash_server.log_text()[log_from:]
        assert expect in out and str(db) in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert host_objects() == before, "a refused start touched the host"
        assert asyncio.run(_runtime().is_running(sid))
    finally:
        if db.is_dir():
            db.rmdir()
        for f in _store_files():
            f.unlink(missing_ok=True)
        for f in saved.iterdir():
            f.rename(DATA_DIR / f.name)
        saved.rmdir()
    crash_server.start()
    sbx = Sandbox.connect(sid)
    assert bg.pid in {p.pid for p in sbx.commands.list()}
    assert sbx.kill() is True
