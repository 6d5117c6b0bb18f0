"""Building, rebuilding and failing, with small throwaway templates in the shared root (they
share its apt cache). Concurrent ensure calls from tasks, a thread and another process must
build once; a failed build must leave nothing behind."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading

import pytest

from hutch.errors import TemplateError
from hutch.templates import Catalog, Recipe, TemplateStore, TerminalProgress

from .conftest import BUILD_TIMEOUT, SHARED_ROOT, UID_BASE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT)]

TINY = Recipe(name="hutch-test-tiny", packages=("python3-minimal", "ca-certificates"),
              env=(("LANG", "C.UTF-8"),), dpkg_exclude=("/usr/share/doc/*",))
BROKEN = Recipe(name="hutch-test-broken", packages=("hutch-no-such-package",))


class Counting(TerminalProgress):
    def __init__(self):
        super().__init__(io.StringIO())
        self.starts = 0

    def start(self, template):
        self.starts += 1
        super().start(template)


def tiny_store():
    return TemplateStore(SHARED_ROOT, uid_base=UID_BASE, catalog=Catalog([TINY]))


@pytest.fixture
async def clean_tiny():
    store = tiny_store()
    await store.remove(TINY.name)
    yield store
    await store.remove(TINY.name)


OTHER_PROCESS = """
import asyncio, io, json, sys
from hutch.templates import Catalog, Recipe, TemplateStore, TerminalProgress
recipe = eval(sys.argv[1], {"Recipe": Recipe})
starts = []
class P(TerminalProgress):
    def start(self, t):
        starts.append(t)
        super().start(t)
store = TemplateStore(sys.argv[2], uid_base=int(sys.argv[3]), catalog=Catalog([recipe]))
print("ready", flush=True)
p = P(io.StringIO())
t = asyncio.run(store.ensure(recipe.name, p))
print(json.dumps({"digest": t.digest, "starts": len(starts), "log": p.stream.getvalue()}),
      flush=True)
"""


async def test_concurrent_ensure_builds_once(clean_tiny):
    store = clean_tiny
    name, digest = TINY.name, store.digest(TINY.name)
    # Leftovers of a crashed build and an older build: swept and removed by the new build.
    stale = SHARED_ROOT / ".tmp" / f"{name}@{digest}.dead"
    (stale / "rootfs").mkdir(parents=True)
    old = SHARED_ROOT / name / "00000000deadbeef"
    old.mkdir(parents=True)
    (old / "meta.json").write_text("{}")

    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OTHER_PROCESS, repr(TINY), str(SHARED_ROOT), str(UID_BASE),
        stdout=subprocess.PIPE)
    assert await asyncio.wait_for(other.stdout.readline(), 60) == b"ready\n"

    thread_progress = Counting()
    thread_result = {}

    def in_thread():
        thread_result["t"] = asyncio.run(tiny_store().ensure(name, thread_progress))

    thread = threading.Thread(target=in_thread)
    thread.start()
    progresses = [Counting() for _ in range(3)]
    results = await asyncio.gather(*(store.ensure(name, p) for p in progresses))
    await asyncio.to_thread(thread.join, BUILD_TIMEOUT)
    line = await asyncio.wait_for(other.stdout.readline(), BUILD_TIMEOUT)
    assert await other.wait() == 0
    from_other = json.loads(line)

    starts = sum(p.starts for p in progresses) + thread_progress.starts + from_other["starts"]
    assert starts == 1
    digests = {t.digest for t in results} | {thread_result["t"].digest, from_other["digest"]}
    assert digests == {digest}
    template = store.get(name)
    assert template == results[0]
    assert [p.name for p in (SHARED_ROOT / name).iterdir()] == [digest]
    assert not stale.exists()
    assert not list((SHARED_ROOT / ".tmp").glob(f"{name}@*"))

    # The builder's progress, as a log shows it: one line per phase, ending with the result.
    logs = [p.stream.getvalue() for p in [*progresses, thread_progress] if p.starts]
    logs += [from_other["log"]] if from_other["starts"] else []
    (log,) = logs
    lines = log.splitlines()
    assert lines[0] == f"hutch: building template {name}"
    phases = [ln.split("% ", 1)[1] for ln in lines[1:-1]]
    assert phases[:2] == ["preparing", "updating package lists"]
    assert "installing essential packages" in phases and "configuring" in phases
    assert phases[-2:] == ["recording metadata", "done"]
    assert lines[-1].startswith(f"hutch: template {name} built in ")

    # The result is a usable root owned in the sandbox range; a second ensure is immediate.
    (rootfs,) = template.layers
    assert (rootfs / "home/user").stat().st_uid == UID_BASE + 1000
    again = Counting()
    assert await store.ensure(name, again) == template and again.starts == 0


async def test_a_failed_build_leaves_nothing(tmp_path):
    store = TemplateStore(SHARED_ROOT, uid_base=UID_BASE, catalog=Catalog([BROKEN]))
    progress = Counting()
    with pytest.raises(TemplateError) as info:
        await store.ensure(BROKEN.name, progress)
    message = str(info.value)
    assert "mmdebstrap exited with status" in message
    assert "hutch-no-such-package" in message          # the log's tail says why
    assert "last lines of the build log" in message
    assert not (SHARED_ROOT / BROKEN.name).exists()
    assert not list((SHARED_ROOT / ".tmp").glob(f"{BROKEN.name}@*"))
    assert store.get(BROKEN.name) is None
    last = progress.stream.getvalue().splitlines()[-1]
    assert last.startswith(f"hutch: template {BROKEN.name} FAILED in ")


async def test_a_cancelled_build_leaves_nothing(clean_tiny):
    store = clean_tiny
    progress = Counting()
    task = asyncio.create_task(store.ensure(TINY.name, progress))
    # Cancel once mmdebstrap is busy installing (so its mounts and children exist).
    while "installing essential" not in progress.stream.getvalue():
        assert not task.done(), task.exception()
        await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (SHARED_ROOT / TINY.name).exists()
    assert not list((SHARED_ROOT / ".tmp").glob(f"{TINY.name}@*"))
    # No mount mmdebstrap made inside the build tree outlived it (other sandboxes may well
    # have the shared base mounted as a lower layer; only mount points count here).
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    assert not [p for p in points if p.startswith(str(SHARED_ROOT / ".tmp"))]
