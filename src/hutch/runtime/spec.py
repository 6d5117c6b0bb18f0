"""What the server asks the runtime for, and what it gets back.

These two records are the seam between policy (the server decides every value) and mechanism
(the runtime turns them into an OCI bundle, cgroups, mounts and a network namespace). The
runtime applies no defaults of its own beyond what is written here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hutch.runtime.egress import EgressPolicy


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into the sandbox."""

    source: Path
    destination: str
    read_only: bool = True


@dataclass(frozen=True)
class AgentFork:
    """The agent, when the runtime can fork it from its host-side zygote (runtime/zygote.py)
    rather than start it inside: then the init runs a process that only waits, and the
    agent joins the sandbox once the init runs. ``args`` stays the way to start it inside."""

    lib: Path                       # host dir holding the agent's `hutch` package
    lib_inside: str                 # where that dir is mounted inside (for later imports)
    socket: str                     # the agent's unix socket, inside
    interpreter: str | None = None  # the code interpreter's socket, inside


@dataclass(frozen=True)
class SandboxSpec:
    id: str                                  # [a-z0-9]+; names every kernel object
    layers: tuple[Path, ...]                 # read-only rootfs layers, topmost first
    args: tuple[str, ...]                    # the process started under the init (PID 1)
    env: tuple[tuple[str, str], ...] = ()    # environment of that process
    cwd: str = "/"
    hostname: str = "sandbox"
    cpu: float = 1.0                         # cores
    memory_mb: int = 1024                    # hard limit, no swap
    pids: int = 1024
    disk_mb: int = 2048                      # hard quota on the writable layer
    network: str = "internet"                # "internet" (veth + NAT, always-deny) or "none"
    mounts: tuple[Mount, ...] = field(default_factory=tuple)
    egress: EgressPolicy | None = None       # mode "internet": what it may reach (None: all)
    # Started ahead of need (a warm pool): started and run at the lowest CPU weight, so it
    # never slows a live request, until resize() hands it out at normal weight.
    background: bool = False
    # The process confines itself with Landlock as it starts (the agent's --landlock): it gets
    # CAP_SYS_ADMIN in the bounding set for that one step and must drop it (agent/landlock.py).
    landlock: bool = False
    agent_fork: AgentFork | None = None


@dataclass(frozen=True)
class SandboxHandle:
    """A running sandbox as the runtime knows it."""

    id: str
    run_dir: Path        # host directory mounted at /run/hutch inside (the agent's socket lives here)
    address: str | None  # the sandbox's IPv4 address on the bridge, None in network mode "none"
    #: Seconds of each step of its start (the create's Server-Timing shows them); the disk
    #: steps and the network's run at the same time.
    timings: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"
