"""Kernels after the first: new contexts, restarts, other languages, and what the kernels'
zygote that forks them costs in memory (docs/design.md, "The code interpreter").

Each round is a fresh code-interpreter sandbox whose default kernel has answered once. Then,
through the interpreter's routes as the SDKs call them, each timed from the request that
makes the kernel to the result line of the first `run_code` in it: a new Python context (the
sandbox's first after the default one, which starts the zygote), three more (forked), a
restart of one, a JavaScript context and a bash context; then warm three-line cells in the
bash context (each line is a round trip to bash, which used to pause 50 ms before each
send). The last round's sandbox is then measured by process: the default kernel (started),
the zygote, a forked Python kernel.

    .venv/bin/python bench/contexts.py     # this measure alone, against its own server
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

#: Later Python contexts per round.
LATER = 3
#: Warm three-line bash cells per round.
WARM = 10


def _first_result(b, sbx: dict, make, code: str) -> tuple[float, str]:
    """ms from `make()` (which makes a kernel and returns its context) to the first output of
    `code`'s first run there (a result, or bash's stdout), and the context."""
    t0 = time.perf_counter()
    ctx = make()
    seen = b.run_code(sbx, code, context=ctx)
    return (seen.get("result", seen.get("stdout", seen["end_of_execution"])) - t0) * 1000, ctx


def kernels_by_kind(sbx: dict, pids_of, pss_mib) -> dict[str, list[float]]:
    """PSS (MiB) of the sandbox's kernels by kind: started (a parent that is no zygote),
    the zygote, forked (a zygote's child)."""
    procs = {}
    for pid in pids_of(sbx["sandboxID"]):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        procs[pid] = (ppid, b"kernel_zygote" in argv, b"ipykernel" in argv)
    kinds: dict[str, list[float]] = {"started": [], "zygote": [], "forked": []}
    for pid, (ppid, zygote_line, launcher) in procs.items():
        parent_is_zygote = procs.get(ppid, (0, False, False))[1]
        if zygote_line and parent_is_zygote:
            kinds["forked"].append(pss_mib([pid]))
        elif zygote_line:
            kinds["zygote"].append(pss_mib([pid]))
        elif launcher:
            kinds["started"].append(pss_mib([pid]))
    return kinds


def measure(b, template: str, n: int, pct, summary, pids_of, pss_mib) -> list[tuple[str, str, str]]:
    first, later, restart, js, bash, bash_warm = [], [], [], [], [], []
    memory: dict[str, list[float]] = {}
    for i in range(n):
        sbx = b.create(templateID=template)
        try:
            b.run_code(sbx, "1+1")
            python = lambda: b.new_context(sbx)  # noqa: E731
            first.append(_first_result(b, sbx, python, "1+1")[0])
            for _ in range(LATER):
                ms, ctx = _first_result(b, sbx, python, "1+1")
                later.append(ms)

            def restarted():
                b.data.post(f"/contexts/{ctx}/restart",
                            headers=b.headers(sbx, b.interpreter_port)).raise_for_status()
                return ctx

            restart.append(_first_result(b, sbx, restarted, "1+1")[0])
            js.append(_first_result(b, sbx, lambda: b.new_context(sbx, "javascript"),
                                    "1+1")[0])
            ms, shell = _first_result(b, sbx, lambda: b.new_context(sbx, "bash"), "echo 1")
            bash.append(ms)
            for _ in range(WARM):
                t0 = time.perf_counter()
                seen = b.run_code(sbx, "echo 1\necho 2\necho 3", context=shell)
                bash_warm.append((seen["end_of_execution"] - t0) * 1000)
            if i == n - 1:
                time.sleep(3.0)
                memory = kernels_by_kind(sbx, pids_of, pss_mib)
        finally:
            b.kill(sbx)
    ratio = pct(first, 50) / pct(later, 50)
    rows = [
        ("a new Python context → result of its first `run_code`: the sandbox's first after the "
         "default one (it starts the kernels' zygote)", summary(first), "–"),
        ("… each later one (its kernel forked from the zygote)", summary(later),
         f"first ÷ later {ratio:.1f}× (p50)"),
        ("`restart_code_context` → result of the next `run_code`", summary(restart), "–"),
        ("a new JavaScript context → result of its first `run_code`", summary(js), "–"),
        ("a new bash context → result of its first `run_code`", summary(bash), "–"),
        ("a three-line bash cell, warm context (to `end_of_execution`)", summary(bash_warm), "–"),
    ]
    if memory.get("zygote") and memory.get("forked") and memory.get("started"):
        forked = sum(memory["forked"]) / len(memory["forked"])
        rows.append((
            f"memory by process, PSS, with {len(memory['forked'])} forked kernels idle",
            f"default kernel (started) {memory['started'][0]:.1f} · zygote "
            f"{memory['zygote'][0]:.1f} · forked kernel {forked:.1f} MiB each", "–"))
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as suite

    suite.print_alone(lambda b: measure(b, suite.CODE_TEMPLATE, 5, suite.pct, suite.summary,
                                        suite.sandbox_pids, suite.pss_mib))


if __name__ == "__main__":
    main()
