"""The runtime: mechanism only. Turns a SandboxSpec into a running, isolated OCI container.

The public door is :class:`LocalRuntime` (runc or crun on this host); the records it speaks
are in :mod:`hutch.runtime.spec`.
"""

from hutch.runtime.agent_socket import pinned_socket
from hutch.runtime.local import LocalRuntime
from hutch.runtime.oci import ProbeResult
from hutch.runtime.spec import Mount, SandboxHandle, SandboxSpec

__all__ = ["LocalRuntime", "Mount", "ProbeResult", "SandboxHandle", "SandboxSpec",
           "pinned_socket"]
