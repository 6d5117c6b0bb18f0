"""The kernels' zygote, seen from outside the kernels: which process each kernel is a child of
(read from /proc as root, by a command beside the interpreter), what a forked kernel is
next to a started one, and what happens when the zygote's code changes or it is killed."""

from __future__ import annotations

import ast
import json
import time

import pytest

from hutch import Sandbox
from hutch.agent.interpreter import kernelspecs
from hutch.agent.interpreter.zygote import start_up

PROCESSES = r"""
import json, os
out = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        out[pid] = {"ppid": ppid, "args": [a.decode(errors="replace") for a in args]}
print(json.dumps(out))
"""

# What a kernel is, as a `python -c` start would have made it (JPY_PARENT_PID aside, which
# names its parent).
DESCRIBE = r"""
import json as _j, os as _o, sys as _s
_status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
_j.dumps({
    "argv": _s.argv[:1] + _s.argv[3:], "path": _s.path, "cwd": _o.getcwd(),
    "env": {k: v for k, v in _o.environ.items() if k != "JPY_PARENT_PID"},
    "parent": _o.environ.get("JPY_PARENT_PID") == str(_o.getppid()),
    "leader": (_o.getsid(0), _o.getpgid(0)) == (_o.getpid(), _o.getpid()),
    "stdin": _o.readlink("/proc/self/fd/0"), "stdin_empty": _s.stdin.read() == "",
    "oom": open("/proc/self/oom_score_adj").read().strip(),
    "signals": {k: _status[k].strip() for k in ("SigBlk", "SigIgn", "SigCgt")},
    "names": sorted(n for n in dir(__import__("__main__")) if "zygote" in n),
    "pid": _o.getpid(),
})
"""


@pytest.fixture
def sbx(code_interpreter):
    box = Sandbox.create(template="code-interpreter", url=code_interpreter.url,
                         api_key=code_interpreter.api_key, metadata={"suite": "zygote"})
    try:
        yield box
    finally:
        box.kill()


def processes(sbx) -> dict[int, dict]:
    out = sbx.commands.run(f"python3 -c '{PROCESSES}'", user="root").stdout
    return {int(pid): p for pid, p in json.loads(out).items()}


def is_zygote(p: dict) -> bool:
    # Forked kernels show the zygote's command line too; the zygote is the one whose parent
    # is not a zygote.
    return any("kernel_zygote.py" in a for a in p["args"])


def zygotes(procs: dict[int, dict]) -> set[int]:
    return {pid for pid, p in procs.items()
            if is_zygote(p) and not is_zygote(procs.get(p["ppid"], {"args": []}))}


def pid_of(sbx, context=None) -> int:
    run = sbx.run_code("__import__('os').getpid()", context=context)
    assert run.error is None, run.error
    return int(run.text)


def describe(sbx, context=None) -> dict:
    run = sbx.run_code(DESCRIBE, context=context)
    assert run.error is None, run.error
    return json.loads(ast.literal_eval(run.text))


def wait_until(check, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_only_a_second_kernel_starts_the_zygote_and_every_later_kernel_is_its_fork(sbx):
    default = pid_of(sbx)
    procs = processes(sbx)
    assert zygotes(procs) == set(), "a sandbox using only the default kernel holds no zygote"
    agent = procs[default]["ppid"]
    assert any("hutch.agent" in a for a in procs[agent]["args"])

    a = sbx.create_code_context(cwd="/tmp")
    forked = pid_of(sbx, a)
    procs = processes(sbx)
    (zygote,) = zygotes(procs)
    assert procs[forked]["ppid"] == zygote and procs[zygote]["ppid"] == agent

    js = sbx.create_code_context(language="javascript")
    assert sbx.run_code("1 + 2", context=js).text == "3"
    bash = sbx.create_code_context(language="bash")
    assert sbx.run_code("echo $((2 * 3))", context=bash).logs.stdout == ["6\n"]
    sbx.restart_code_context(a)
    restarted = pid_of(sbx, a)
    procs = processes(sbx)
    assert zygotes(procs) == {zygote}
    kernels = {pid for pid, p in procs.items() if p["ppid"] == zygote}
    assert restarted in kernels and forked not in kernels
    assert len(kernels) == 3            # the Python, JavaScript and bash contexts' kernels


def test_a_forked_kernel_is_the_process_a_started_one_would_be(sbx):
    started = describe(sbx)
    contexts = [sbx.create_code_context() for _ in range(2)]
    forked = [describe(sbx, c) for c in contexts]
    procs = processes(sbx)
    (zygote,) = zygotes(procs)
    for kernel in forked:
        assert procs[kernel["pid"]]["ppid"] == zygote
        assert kernel.pop("pid") != started["pid"]
    started.pop("pid")
    assert started["leader"] and started["parent"] and started["stdin_empty"]
    assert started["names"] == [] and started["oom"] == "1000"
    assert forked[0] == started and forked[1] == started

    # It holds none of the zygote's descriptors (its requests and answers pipes).
    links = sbx.commands.run(
        f"for k in {' '.join(str(k) for k in procs if procs[k]['ppid'] == zygote)}; do "
        f"readlink /proc/$k/fd/*; done; echo ==; readlink /proc/{zygote}/fd/*",
        user="root").stdout
    kernels_fds, zygotes_fds = (set(part.split()) for part in links.split("=="))
    zygotes_pipes = {fd for fd in zygotes_fds if fd.startswith("pipe:")}
    assert zygotes_pipes and not zygotes_pipes & kernels_fds

    # Each fork draws its own random numbers.
    draws = {sbx.run_code("import random; random.random()", context=c).text for c in contexts}
    assert len(draws) == 2


def test_a_forked_kernel_that_dies_is_reported_with_its_exit_status(sbx):
    ctx = sbx.create_code_context()
    sbx.run_code("kept = 1", context=ctx)
    died = sbx.run_code("import os; os._exit(3)", context=ctx)
    assert died.error.name == "KernelDiedError"
    assert "exit status 3" in died.error.value
    assert sbx.run_code("'kept' in globals()", context=ctx).text == "False"


def test_changed_packages_get_a_new_zygote_and_the_old_one_ends_with_its_last_kernel(sbx):
    old = sbx.create_code_context()
    sbx.run_code("kept = 'yes'", context=old)
    (first,) = zygotes(processes(sbx))
    # What pip does to a package it replaces: files renamed out of its directory.
    sbx.commands.run("d=$(python3 -c 'import ipykernel, os; print(os.path.dirname("
                     "ipykernel.__file__))') && touch $d/moved && rm $d/moved", user="root")
    new = pid_of(sbx, sbx.create_code_context())
    procs = processes(sbx)
    (second,) = zygotes(procs) - {first}
    assert procs[new]["ppid"] == second
    assert first in procs, "the old zygote stays while a kernel it forked runs"
    assert sbx.run_code("kept", context=old).text == "'yes'"
    sbx.remove_code_context(old)
    wait_until(lambda: first not in processes(sbx))
    assert zygotes(processes(sbx)) == {second}


def test_a_kernel_sees_what_was_installed_since_the_zygote_started(sbx):
    sbx.create_code_context()
    (first,) = zygotes(processes(sbx))
    # A .pth file in the site directory, as an editable install leaves: a new Python's start
    # puts its directory on the path, so a new kernel must have it too.
    sbx.commands.run("mkdir -p /opt/extra && echo 'VALUE = 7' > /opt/extra/hutch_extra.py && "
                     "python3 -c 'import site; print(site.getsitepackages()[0])' | "
                     "xargs -I{} sh -c 'echo /opt/extra > {}/hutch-extra.pth'", user="root")
    ctx = sbx.create_code_context()
    run = sbx.run_code("import hutch_extra; hutch_extra.VALUE", context=ctx)
    assert run.error is None, run.error
    assert run.text == "7"
    assert zygotes(processes(sbx)) - {first}


def test_a_killed_zygote_is_replaced_by_the_next_kernel(sbx):
    sbx.create_code_context()
    (first,) = zygotes(processes(sbx))
    sbx.commands.run(f"kill -9 {first}", user="root")
    ctx = sbx.create_code_context()
    assert sbx.run_code("6 * 7", context=ctx).text == "42"
    kernel = pid_of(sbx, ctx)
    procs = processes(sbx)
    (second,) = zygotes(procs)
    assert second != first and procs[kernel]["ppid"] == second


def test_what_a_fork_must_share_with_its_zygote():
    python = "/usr/bin/python3"
    base = {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8"}
    key = start_up(python, base)
    # Read after the start (by the kernel, or not at all by Python): forks share a zygote.
    assert start_up(python, {**base, "MPLBACKEND": "agg", "PATH": "/bin", "X": "1",
                             "TZ": "Asia/Tokyo", "LC_TIME": "de_DE.UTF-8"}) == key
    # The agent library the JavaScript kernel's spec puts on the path holds only hutch.
    assert start_up(python, {**base, "PYTHONPATH": kernelspecs.LIB}) == key
    # Read as Python starts: each needs a zygote of its own.
    for change in ({"PYTHONPATH": "/opt/mine"}, {"LANG": "de_DE.UTF-8"}, {"LC_ALL": "C"},
                   {"LC_CTYPE": "C"}, {"PYTHONHASHSEED": "0"}, {"LD_PRELOAD": "/x.so"},
                   {"HOME": "/home/u"}):
        assert start_up(python, {**base, **change}) != key, change
    assert start_up("/usr/local/bin/python3", base) != key
