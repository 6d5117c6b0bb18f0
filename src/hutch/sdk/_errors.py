"""Translation of wire failures into hutch.errors, at the SDK's edge.

Three shapes arrive: the control plane's JSON `{code, message}` with an HTTP status, the
agent's Connect errors `{code: "not_found", message}` (unary bodies and end-stream
messages), and the agent's plain-HTTP routes (`/files`) with `{code: <int>, message}`.
"""

from __future__ import annotations

import json
from typing import Optional, Type

from hutch import errors

_BY_STATUS: dict[int, Type[errors.HutchError]] = {
    400: errors.InvalidArgumentError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    429: errors.RateLimitError,
    503: errors.UnavailableError,
    504: errors.TimeoutError_,
    507: errors.NotEnoughSpaceError,
}

_BY_CONNECT_CODE: dict[str, Type[errors.HutchError]] = {
    "invalid_argument": errors.InvalidArgumentError,
    "failed_precondition": errors.InvalidArgumentError,
    "out_of_range": errors.InvalidArgumentError,
    "unauthenticated": errors.AuthenticationError,
    "permission_denied": errors.PermissionDeniedError,
    "not_found": errors.NotFoundError,
    "already_exists": errors.AlreadyExistsError,
    "resource_exhausted": errors.NotEnoughSpaceError,
    "deadline_exceeded": errors.TimeoutError_,
    "unavailable": errors.UnavailableError,
    "aborted": errors.ConflictError,
}

# Connect's own status for each code, used when a non-Connect body arrives.
_CONNECT_BY_STATUS = {
    400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
    404: "not_found", 409: "already_exists", 429: "resource_exhausted",
    499: "canceled", 501: "unimplemented", 503: "unavailable", 504: "deadline_exceeded",
}


def _message(body: bytes, status: int) -> tuple[Optional[object], str]:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        return None, body.decode(errors="replace").strip() or f"HTTP {status}"
    if not isinstance(data, dict):
        return None, f"HTTP {status}"
    return data.get("code"), str(data.get("message") or f"HTTP {status}")


def from_api(status: int, body: bytes, *,
             not_found: Type[errors.HutchError] = errors.SandboxNotFoundError) -> errors.HutchError:
    """A failed control-plane call (or a data-plane call the server itself refused)."""
    _, message = _message(body, status)
    if status == 404:
        return not_found(message, status=404)
    if status == 502 and "not found" in message:
        # The server answers for sandboxes it does not know (or that are gone) with 502.
        return errors.SandboxNotFoundError(message, status=502)
    cls = _BY_STATUS.get(status, errors.SandboxError)
    return cls(message, status=status)


def from_connect(code: Optional[str], message: str, *,
                 not_found: Type[errors.HutchError] = errors.NotFoundError) -> errors.HutchError:
    if code == "not_found":
        return not_found(message)
    if code == "resource_exhausted" and "space" not in message.lower() and "quota" not in message.lower():
        return errors.RateLimitError(message)
    cls = _BY_CONNECT_CODE.get(code or "", errors.SandboxError)
    return cls(message)


def from_agent(status: int, body: bytes, *,
               not_found: Type[errors.HutchError] = errors.NotFoundError) -> errors.HutchError:
    """A failed data-plane call: a Connect error body, an agent HTTP error, or the proxy's."""
    code, message = _message(body, status)
    if status == 502:
        return from_api(status, body)
    if isinstance(code, str):
        return from_connect(code, message, not_found=not_found)
    if status == 404:
        return not_found(message, status=404)
    if status == 507:
        return errors.NotEnoughSpaceError(message)
    connect_code = _CONNECT_BY_STATUS.get(status)
    if connect_code:
        return from_connect(connect_code, message, not_found=not_found)
    return errors.SandboxError(message, status=status)


def from_end_stream(message: dict, *,
                    not_found: Type[errors.HutchError] = errors.NotFoundError) -> Optional[errors.HutchError]:
    """The error a Connect end-stream message carries, if any."""
    error = message.get("error")
    if not error:
        return None
    return from_connect(error.get("code"), error.get("message", ""), not_found=not_found)
