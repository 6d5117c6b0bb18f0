"""Connect error codes and their HTTP statuses (the Connect protocol's fixed table).

Unary RPC errors travel as a non-200 status whose JSON body is ``{"code", "message"}``; stream
errors travel in the end-stream message. Both directions of the mapping live here so the agent,
the server's proxy and the SDK agree.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

CANCELED = "canceled"
UNKNOWN = "unknown"
INVALID_ARGUMENT = "invalid_argument"
DEADLINE_EXCEEDED = "deadline_exceeded"
NOT_FOUND = "not_found"
ALREADY_EXISTS = "already_exists"
PERMISSION_DENIED = "permission_denied"
RESOURCE_EXHAUSTED = "resource_exhausted"
FAILED_PRECONDITION = "failed_precondition"
ABORTED = "aborted"
OUT_OF_RANGE = "out_of_range"
UNIMPLEMENTED = "unimplemented"
INTERNAL = "internal"
UNAVAILABLE = "unavailable"
DATA_LOSS = "data_loss"
UNAUTHENTICATED = "unauthenticated"

#: Connect code -> HTTP status of a unary error response.
CODE_TO_STATUS: Dict[str, int] = {
    CANCELED: 499,
    UNKNOWN: 500,
    INVALID_ARGUMENT: 400,
    DEADLINE_EXCEEDED: 504,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    PERMISSION_DENIED: 403,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    ABORTED: 409,
    OUT_OF_RANGE: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    DATA_LOSS: 500,
    UNAUTHENTICATED: 401,
}

#: HTTP status -> Connect code, for responses that carry no Connect error body
#: (a proxy's 502, a plain-text 404). Follows the Connect spec's HTTP-to-code table.
STATUS_TO_CODE: Dict[int, str] = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def status_for_code(code: str) -> int:
    """HTTP status for a Connect code (500 for codes this table does not know)."""
    return CODE_TO_STATUS.get(code, 500)


def code_for_status(status: int) -> str:
    """Connect code for an HTTP status that came without a Connect error body."""
    return STATUS_TO_CODE.get(status, UNKNOWN)


def error_body(code: str, message: str, details: Optional[list] = None) -> Dict[str, Any]:
    """The JSON of a Connect error: ``{"code","message"}`` (used by unary and end-stream)."""
    out: Dict[str, Any] = {"code": code, "message": message}
    if details:
        out["details"] = details
    return out
