"""``python3 -m hutch.agent.interpreter --fd N``: the code interpreter server, serving the
listening unix socket it inherits as file descriptor N (the agent made it).

Started by the agent (as root, like E2B's, so `pip install` and writes anywhere work from
code) in sandboxes whose template provides it. It runs on the template's Python but needs
only the standard library (it speaks to kernels itself: :mod:`.client`), so without ``site``;
the kernels it starts are the template's and get ``site`` as usual.
"""

from __future__ import annotations

import os
import sys

from . import kernelspecs
from .kernel import KernelProcess


def _workdir() -> str:
    """A private directory for the kernels' connection files and sockets (0700: only root in
    the sandbox can reach a kernel)."""
    parent = "/run" if os.access("/run", os.W_OK) else (os.environ.get("TMPDIR") or "/tmp")
    while True:
        path = os.path.join(parent, "hutch-interpreter-" + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


async def _until_stopped() -> None:
    """Return once the process is asked to stop (SIGTERM or SIGINT)."""
    import asyncio
    import signal

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    await stop


async def serve(fd: int, work: str, kernel_dir: str, env: dict[str, str], default_id: str,
                first: KernelProcess | None) -> None:
    import asyncio
    import socket

    from ..http import READ_LIMIT, serve_connection
    from .context import Contexts
    from .server import InterpreterApp

    contexts = Contexts(work, kernelspecs.search_path(kernel_dir), env, prelaunched=first)
    app = InterpreterApp(contexts)
    contexts.default("python", default_id)     # adopts the kernel started in main()

    sock = socket.socket(fileno=fd)
    server = await asyncio.start_unix_server(lambda r, w: serve_connection(r, w, app),
                                             sock=sock, limit=READ_LIMIT)
    try:
        await _until_stopped()
    finally:
        server.close()
        await contexts.close()


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--fd" or not args[1].isdigit():
        sys.stderr.write("usage: python3 -m hutch.agent.interpreter --fd N\n")
        return 2
    # The default Python kernel starts first thing, before even asyncio is imported: the first
    # run_code waits for the kernel's start-up, and everything else here happens during it.
    work = _workdir()
    kernel_dir = kernelspecs.write(work)
    # The environment is the kernels' (the agent took out its own settings), but for the
    # PYTHONPATH that found this package: that one is ours alone.
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    default_id = os.urandom(16).hex()
    spec = kernelspecs.specs()[kernelspecs.DEFAULT_PYTHON]
    try:
        first = KernelProcess.from_spec(spec, env, kernelspecs.DEFAULT_CWD, work, default_id)
    except OSError:
        first = None                   # started again, with its error reported, on first use

    # The interpreter never speaks TLS, but asyncio imports ssl if it can, which loads
    # OpenSSL's libssl (memory in every code-interpreter sandbox): a None entry makes that
    # import fail, and asyncio then runs without TLS support. The kernels are other
    # processes: user code is not affected.
    sys.modules.setdefault("ssl", None)
    import asyncio

    asyncio.run(serve(int(args[1]), work, kernel_dir, env, default_id, first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
