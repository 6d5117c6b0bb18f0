"""Would a kernel zygote pay? A Python kernel started, against one forked from a process that
has made the kernel's imports already, timed inside a code-interpreter sandbox.

The sandbox's own Python runs a small script (below): each round it starts a kernel the way
the interpreter does (a new ``python3`` that imports ipykernel and IPython, then starts the
kernel app), and has a waiting process with those imports done fork one; each is timed from
the request to the kernel's answer to ``kernel_info`` on its shell channel (the client
connects once the kernel's socket exists, as the interpreter's does, so ZeroMQ's 100 ms
reconnect interval never enters). Both variants run in the same sandbox, interleaved.

    .venv/bin/python bench/kernel_fork.py      # this measure alone, against its own server
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, signal, subprocess, sys, tempfile, time
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import write_connection_file

IMPORTS = ("import sys; sys.modules['debugpy'] = None; "
           "import ipykernel.kernelapp, ipykernel.ipkernel, ipykernel.zmqshell, IPython")
START = IMPORTS + "; from ipykernel.kernelapp import IPKernelApp; IPKernelApp.launch_instance()"
ZYGOTE = IMPORTS + """
import os, signal
from ipykernel.kernelapp import IPKernelApp
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        sys.argv = ["kernel", "-f", line.strip(), "--HistoryManager.enabled=False"]
        IPKernelApp.launch_instance()
        os._exit(0)
    print(pid, flush=True)
"""
FLAGS = ["--HistoryManager.enabled=False"]


def answered(conn, info, t0):
    """ms from t0 until the kernel behind `conn` answers kernel_info."""
    shell = f"{info['ip']}-{info['shell_port']}"
    while not os.path.exists(shell):
        time.sleep(0.001)
    kc = BlockingKernelClient(connection_file=conn)
    kc.load_connection_file()
    kc.start_channels()
    try:
        asked = kc.kernel_info()
        while True:
            reply = kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == asked:
                return (time.perf_counter() - t0) * 1000
    finally:
        kc.stop_channels()


def connection(work, name):
    conn = os.path.join(work, name + ".json")
    _, info = write_connection_file(conn, transport="ipc", ip=os.path.join(work, name))
    return conn, info


n = int(sys.argv[1])
work = tempfile.mkdtemp(prefix="kernel-fork-")
zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
assert zygote.stdout.readline().strip() == "ready"
started, forked = [], []
for i in range(n):
    conn, info = connection(work, f"s{i}")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", START, "-f", conn, *FLAGS],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    started.append(answered(conn, info, t0))
    proc.kill()
    proc.wait()
    conn, info = connection(work, f"f{i}")
    t0 = time.perf_counter()
    zygote.stdin.write(conn + "\n")
    zygote.stdin.flush()
    pid = int(zygote.stdout.readline())
    forked.append(answered(conn, info, t0))
    os.kill(pid, signal.SIGKILL)
zygote.kill()
print(json.dumps({"started": started, "forked": forked}))
'''


def measure(b, template: str, n: int, pct, summary) -> list[tuple[str, str, str]]:
    """Rows: a kernel ready when started, when forked, and their ratio."""
    sbx = b.create(templateID=template)
    try:
        out = b.run(sbx, f"python3 - {n} <<'SCRIPT'\n{SCRIPT}\nSCRIPT")
    finally:
        b.kill(sbx)
    result = json.loads(out.decode().strip().splitlines()[-1])
    started, forked = result["started"], result["forked"]
    return [
        ("a Python kernel ready (answering `kernel_info`), started in the sandbox",
         summary(started), "–"),
        ("… forked instead from a process there whose imports are done (interleaved)",
         summary(forked), f"started ÷ forked {pct(started, 50) / pct(forked, 50):.1f}× (p50)"),
    ]


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as suite

    proc, url, key = suite.start_server()
    try:
        b = suite.Bench(url, key)
        for row in measure(b, suite.CODE_TEMPLATE, 5, suite.pct, suite.summary):
            print(" | ".join(row))
    finally:
        suite.stop_server(proc)


if __name__ == "__main__":
    main()
