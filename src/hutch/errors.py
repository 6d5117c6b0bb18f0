"""The one exception tree of hutch.

Every error hutch raises on purpose derives from :class:`HutchError`. Foreign exceptions
(httpx, OSError from a syscall, runc's exit status) are translated at the boundary where they
happen, so callers catch hutch's names only. Each class carries the HTTP status the server
answers with when the error crosses the wire, which keeps the mapping in one place.
"""

from __future__ import annotations


class HutchError(Exception):
    """Base of every error hutch raises."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


# -- client side and wire -------------------------------------------------------------------


class InvalidArgumentError(HutchError):
    """The request or call was malformed: a clear message names what is wrong."""

    status = 400
    code = "invalid_argument"


class AuthenticationError(HutchError):
    """The API key or access token is missing, unknown or revoked."""

    status = 401
    code = "unauthenticated"


class PermissionDeniedError(HutchError):
    status = 403
    code = "permission_denied"


class NotFoundError(HutchError):
    """The sandbox, file, process or template does not exist (or is not yours)."""

    status = 404
    code = "not_found"


class SandboxNotFoundError(NotFoundError):
    """The sandbox does not exist, was killed, or reached its end of life."""


class FileNotFoundError_(NotFoundError):  # noqa: N801 - the builtin name is taken
    """A path inside the sandbox does not exist."""


class AlreadyExistsError(HutchError):
    status = 409
    code = "already_exists"


class ConflictError(HutchError):
    status = 409
    code = "conflict"


class RateLimitError(HutchError):
    status = 429
    code = "resource_exhausted"


class NotEnoughSpaceError(HutchError):
    """The sandbox's disk quota is full."""

    status = 507
    code = "resource_exhausted"


class TimeoutError_(HutchError):  # noqa: N801 - the builtin name is taken
    """A command, request or execution ran past its deadline."""

    status = 504
    code = "deadline_exceeded"


class CommandExitError(HutchError):
    """A command finished with a non-zero exit code (raised by ``wait()`` and ``run()``)."""

    status = 200

    def __init__(self, result) -> None:
        self.result = result
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.error = result.error
        tail = (result.stderr or "")[-500:]  # None when output went to callbacks only
        super().__init__(f"command exited with code {result.exit_code}: {tail}")


class SandboxError(HutchError):
    """A sandbox could not be created or used (the message says why)."""


class UnavailableError(HutchError):
    status = 503
    code = "unavailable"


# -- host side -------------------------------------------------------------------------------


class RuntimeError_(HutchError):  # noqa: N801 - the builtin name is taken
    """The OCI runtime, a mount, a cgroup or the network setup failed on the host."""


class TemplateError(HutchError):
    """A template could not be built or found."""


class ConfigError(HutchError):
    """A configuration value is invalid; the message names the setting."""

    status = 500


# The names users see: importable without the trailing underscore through hutch.errors.
FileNotFound = FileNotFoundError_
Timeout = TimeoutError_
RuntimeFailure = RuntimeError_

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "CommandExitError",
    "ConfigError",
    "ConflictError",
    "FileNotFound",
    "FileNotFoundError_",
    "HutchError",
    "InvalidArgumentError",
    "NotEnoughSpaceError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RuntimeError_",
    "RuntimeFailure",
    "SandboxError",
    "SandboxNotFoundError",
    "TemplateError",
    "Timeout",
    "TimeoutError_",
    "UnavailableError",
]
