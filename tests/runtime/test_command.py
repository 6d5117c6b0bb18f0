"""hutch.runtime.command: programs run from the event loop, without forking the caller."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest
import uvloop

from hutch.runtime import command


@pytest.fixture(params=["asyncio", "uvloop"])
def run_loop(request):
    """Run a coroutine on the stdlib loop and on uvloop (the server's default)."""
    def run(coro):
        return uvloop.run(coro) if request.param == "uvloop" else asyncio.run(coro)
    return run


def test_output_exit_status_and_input(run_loop):
    big = os.urandom(300_000).hex().encode()        # more than a pipe holds, both ways
    done = run_loop(command.run(["sh", "-c", "cat; echo oops >&2; exit 3"], input=big,
                                stdout=command.PIPE))
    assert done.returncode == 3
    assert done.stdout == big
    assert done.stderr == b"oops\n"


def test_defaults_discard_stdout_and_give_stdin_eof(run_loop):
    done = run_loop(command.run(["sh", "-c", "echo out; cat; echo err >&2"]))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"err\n")


def test_output_to_an_open_file(run_loop, tmp_path):
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)
    try:
        done = run_loop(command.run(["sh", "-c", "echo a; echo b >&2"], stdout=fd, stderr=fd))
    finally:
        os.close(fd)
    assert done.returncode == 0
    assert (tmp_path / "log").read_bytes() == b"a\nb\n"


def test_missing_program_raises_like_popen(run_loop):
    with pytest.raises(FileNotFoundError):
        run_loop(command.run(["/nonexistent/program"]))


def test_a_signal_death_is_a_negative_status(run_loop):
    assert run_loop(command.run(["sh", "-c", "kill -9 $$"])).returncode == -9


def test_the_loop_keeps_running_meanwhile(run_loop):
    """The wait is the loop's: other work proceeds while the program runs."""
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        task = asyncio.create_task(ticker())
        try:
            await command.run(["sleep", "0.3"])
        finally:
            task.cancel()
        return ticks
    assert run_loop(main()) >= 5


def test_many_at_once(run_loop):
    async def main():
        return await asyncio.gather(*(command.run(["sh", "-c", f"echo {i}"],
                                                  stdout=command.PIPE) for i in range(30)))
    assert [d.stdout for d in run_loop(main())] == [f"{i}\n".encode() for i in range(30)]


def test_cancelled_it_leaves_nothing_watched_and_the_program_finishes(run_loop, tmp_path):
    mark = tmp_path / "finished"

    async def main():
        task = asyncio.create_task(command.run(["sh", "-c", f"sleep 0.3; touch {mark}"]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop has no reader left on a closed fd: more runs work.
        return await command.run(["true"])
    assert run_loop(main()).returncode == 0
    deadline = time.monotonic() + 10
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mark.exists()


def test_it_never_uses_the_loops_own_spawn(run_loop):
    """The loop's subprocess support forks the whole caller (uvloop always does): it must
    not be what runs the program."""
    async def main():
        loop = asyncio.get_running_loop()

        def refuse(*args, **kwargs):
            raise AssertionError("the loop's subprocess_exec was used")
        loop.subprocess_exec = refuse
        return await command.run(["sh", "-c", "echo ok"], stdout=command.PIPE)
    assert run_loop(main()).stdout == b"ok\n"
    assert getattr(subprocess, "_USE_VFORK", False), "this Python's subprocess cannot vfork"
