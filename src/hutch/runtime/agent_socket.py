"""Connecting to a sandbox's agent socket without trusting what the sandbox put there.

The run dir is writable by root inside the sandbox, so `agent.sock` may be replaced by a
symlink to a host socket (the container runtime's, the server's own API): a host process
that connects by path would follow it, as root. Opening the name with O_PATH|O_NOFOLLOW pins
exactly the inode that is there, a check that it is a socket rejects anything else, and the
connection goes through /proc/self/fd/<fd>, which names that pinned inode and nothing else.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hutch.errors import SandboxError


@contextmanager
def pinned_socket(path: Path) -> Iterator[str]:
    """Yield a path that connects to the socket at `path` itself, never through a symlink.

    Use it for the duration of the connect() call: ``with pinned_socket(p) as target:
    await asyncio.open_unix_connection(target)``."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise  # not there yet: the agent may still be starting, callers retry
    except OSError as e:
        raise SandboxError(f"agent socket {path}: {e.strerror}") from e
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISSOCK(mode):
            raise SandboxError(f"agent socket {path} is not a socket")
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
