"""hutch: self-hosted sandboxes for AI agents.

The public door. Imports are lazy on purpose: the in-sandbox agent imports
``hutch.agent`` and ``hutch.protocol`` from a read-only copy of this package on the
template's own Python, where the client's dependencies (httpx) are not installed.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Sandbox": "hutch.sdk",
    "AsyncSandbox": "hutch.sdk",
    "CommandResult": "hutch.sdk",
    "CommandHandle": "hutch.sdk",
    "AsyncCommandHandle": "hutch.sdk",
    "EntryInfo": "hutch.sdk",
    "SandboxInfo": "hutch.sdk",
    "Execution": "hutch.sdk",
    "Result": "hutch.sdk",
    "Context": "hutch.sdk",
    "OutputMessage": "hutch.sdk",
    "ExecutionError": "hutch.sdk",
    "Template": "hutch.sdk",
}
_ERRORS = (
    "HutchError",
    "InvalidArgumentError",
    "AuthenticationError",
    "NotFoundError",
    "SandboxNotFoundError",
    "CommandExitError",
    "SandboxError",
    "TemplateError",
    "NotEnoughSpaceError",
    "RateLimitError",
)

__all__ = ["__version__", *_LAZY, *_ERRORS]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _ERRORS:
        return getattr(importlib.import_module("hutch.errors"), name)
    raise AttributeError(f"module 'hutch' has no attribute {name!r}")
