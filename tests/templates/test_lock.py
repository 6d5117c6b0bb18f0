"""The build lock excludes tasks, threads and processes alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

from hutch.templates.lock import FileLock


async def test_tasks_take_turns(tmp_path):
    path = tmp_path / "x.lock"
    inside = 0
    most = 0

    async def worker():
        nonlocal inside, most
        async with FileLock(path):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 60)
    assert most == 1


async def test_threads_with_their_own_loops_take_turns(tmp_path):
    path = tmp_path / "x.lock"
    inside = 0
    most = 0
    guard = threading.Lock()

    async def worker():
        nonlocal inside, most
        async with FileLock(path):
            with guard:
                inside += 1
                most = max(most, inside)
            await asyncio.sleep(0.01)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=asyncio.run, args=(worker(),)) for _ in range(4)]
    for t in threads:
        t.start()
    await asyncio.to_thread(lambda: [t.join(60) for t in threads])
    assert most == 1


async def test_another_process_waits_for_the_holder(tmp_path):
    path = tmp_path / "x.lock"
    code = (
        "import asyncio, sys\n"
        "from hutch.templates.lock import FileLock\n"
        "async def main():\n"
        "    async with FileLock(__import__('pathlib').Path(sys.argv[1])):\n"
        "        print('got', flush=True)\n"
        "asyncio.run(main())\n"
    )
    async with FileLock(path):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, str(path), stdout=subprocess.PIPE)
        # While we hold the lock the child cannot print; give it time to try.
        try:
            await asyncio.wait_for(proc.stdout.readline(), 1.0)
            raise AssertionError("the child took a held lock")
        except asyncio.TimeoutError:
            pass
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"got\n"
    assert await proc.wait() == 0


async def test_a_cancelled_waiter_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "x.lock"
    async with FileLock(path):
        waiter = asyncio.create_task(FileLock(path).__aenter__())
        await asyncio.sleep(0.05)
        waiter.cancel()
        try:
            await waiter
        except asyncio.CancelledError:
            pass
    # The waiting thread gets the lock once we drop it and must give it back at once.
    async with FileLock(path) as again:
        assert again is not None
    await asyncio.wait_for(_take(path), 30)


async def _take(path):
    async with FileLock(path):
        return True
