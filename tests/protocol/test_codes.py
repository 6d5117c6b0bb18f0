"""Connect error codes <-> HTTP statuses, and the error body."""

from hutch.protocol import codes


def test_code_to_status_table():
    expected = {
        "canceled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504,
        "not_found": 404, "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429,
        "failed_precondition": 400, "aborted": 409, "out_of_range": 400, "unimplemented": 501,
        "internal": 500, "unavailable": 503, "data_loss": 500, "unauthenticated": 401,
    }
    assert codes.CODE_TO_STATUS == expected
    assert codes.status_for_code("bogus") == 500


def test_status_to_code_for_bodies_without_connect_error():
    assert codes.code_for_status(404) == "unimplemented"
    assert codes.code_for_status(502) == "unavailable"
    assert codes.code_for_status(401) == "unauthenticated"
    assert codes.code_for_status(418) == "unknown"


def test_error_body():
    assert codes.error_body("not_found", "gone") == {"code": "not_found", "message": "gone"}


def test_hutch_errors_carry_valid_connect_codes():
    from hutch import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.HutchError) and cls.code:
            assert cls.code in codes.CODE_TO_STATUS or cls.code == "conflict", name
