"""``python3 -m hutch.agent.interpreter --fd N``: the code interpreter server, serving the
listening unix socket it inherits as file descriptor N (the agent made it).

Started by the agent (as root, like E2B's, so `pip install` and writes anywhere work from
code) in sandboxes whose template provides it. It runs on the template's Python with
``site`` enabled, since it needs the template's ``jupyter_client``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import uuid
from pathlib import Path

from ..state import PRIVATE_ENV
from . import kernelspecs
from .kernel import KernelProcess


async def serve(fd: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="hutch-interpreter-", dir="/run" if os.access("/run", os.W_OK) else None))
    kernel_dir = kernelspecs.write(work)
    env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
    # The default Python kernel starts now, while the imports below (jupyter_client and
    # ZeroMQ, a quarter of a second) run: the first run_code waits for the slower of the two.
    default_id = uuid.uuid4().hex
    spec = kernelspecs.specs()[kernelspecs.DEFAULT_PYTHON]
    try:
        first = KernelProcess.from_spec(spec, env, kernelspecs.DEFAULT_CWD, work, default_id)
    except OSError:
        first = None                   # started again, with its error reported, on first use

    from ..http import READ_LIMIT, serve_connection
    from .context import Contexts
    from ..server import until_stopped
    from .server import InterpreterApp

    contexts = Contexts(work, [str(kernel_dir)], env, prelaunched=first)
    app = InterpreterApp(contexts)
    contexts.default("python", default_id)     # adopts the kernel started above

    sock = socket.socket(fileno=fd)
    server = await asyncio.start_unix_server(lambda r, w: serve_connection(r, w, app),
                                             sock=sock, limit=READ_LIMIT)
    try:
        await until_stopped()
    finally:
        server.close()
        await contexts.close()


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--fd" or not args[1].isdigit():
        sys.stderr.write("usage: python3 -m hutch.agent.interpreter --fd N\n")
        return 2
    asyncio.run(serve(int(args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
