"""One kernel process: launched from its spec, interrupted, watched and stopped.

The protocol side (messages over ZeroMQ) is :class:`.client.KernelClient`, given
:attr:`KernelProcess.info`.

Kernels talk over unix sockets (ZeroMQ's ``ipc`` transport) in the interpreter's private
directory rather than TCP on localhost: nothing else in the sandbox can even try their ports,
and the round trip is shorter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Optional

from .zygote import Forked, KernelZygote

_CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class KernelProcess:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, work: str,
                 name: str, zygote: Optional[KernelZygote] = None) -> None:
        self.launch_env: dict[str, str] = dict(env)
        self.prefix = os.path.join(work, f"kernel-{name}")
        self.connection_file = self.prefix + ".json"
        self.info: dict[str, object] = {
            "transport": "ipc", "ip": self.prefix, "key": os.urandom(32).hex(),
            "signature_scheme": "hmac-sha256", "kernel_name": name,
            **{f"{channel}_port": n for n, channel in enumerate(_CHANNELS, 1)},
        }
        fd = os.open(self.connection_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
        argv = [a.replace("{connection_file}", self.connection_file) for a in argv]
        os.makedirs(cwd, exist_ok=True)
        # A session of its own: an interrupt (SIGINT) reaches the kernel, not the interpreter,
        # and stopping it reaches whatever it started (bash, node) too. JPY_PARENT_PID makes
        # ipykernel exit if the interpreter dies. Forked from the zygote where it can be (the
        # same process, its imports already made; the fork sets up all of the above itself).
        self.forked: Optional[Forked] = zygote.fork(argv, env, cwd) if zygote else None
        self.process: "subprocess.Popen | Forked" = self.forked or subprocess.Popen(
            argv, env={**env, "JPY_PARENT_PID": str(os.getpid())}, cwd=cwd,
            stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        # When the sandbox runs out of memory, the kernel holding the user's data is the one
        # to go (it is reported and replaced), never the agent or the interpreter.
        try:
            with open(f"/proc/{self.process.pid}/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass

    @classmethod
    def from_spec(cls, spec: dict[str, object], env: dict[str, str], cwd: str, work: str,
                  name: str, zygote: Optional[KernelZygote] = None) -> "KernelProcess":
        km = cls(list(spec["argv"]), {**env, **spec.get("env", {})}, cwd, work, name, zygote)
        km.launch_env = dict(env)       # the sandbox environment it started with
        return km

    def alive(self) -> bool:
        if self.forked is not None:
            return self.forked.running()
        return self.process.poll() is None

    def exit_code(self) -> int | None:
        if self.forked is not None:
            return self.forked.exit_code()
        return self.process.poll()

    def interrupt(self) -> None:
        # To the whole group, as Jupyter's own kernel manager does: what the cell started
        # (a subprocess, a shell command) is interrupted along with it.
        self._signal(signal.SIGINT)

    def stop(self) -> None:
        """Kill the kernel and everything it started, and remove its sockets."""
        self._signal(signal.SIGKILL)
        if self.forked is not None:
            self.forked.running(timeout=5)
        else:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for path in [self.connection_file] + [f"{self.prefix}-{n}" for n in range(1, 6)]:
            try:
                os.unlink(path)
            except OSError:
                pass

    def _signal(self, signum: int) -> None:
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
