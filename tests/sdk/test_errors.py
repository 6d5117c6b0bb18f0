"""Wire failures become hutch.errors: recorded bodies of the control plane, the agent's
Connect errors, its plain-HTTP routes, and the proxy's answer for a gone sandbox."""

from __future__ import annotations

import json

import pytest

from hutch import errors
from hutch.sdk import _errors


def body(**kw) -> bytes:
    return json.dumps(kw).encode()


@pytest.mark.parametrize("status,cls", [
    (400, errors.InvalidArgumentError),
    (401, errors.AuthenticationError),
    (403, errors.PermissionDeniedError),
    (404, errors.SandboxNotFoundError),
    (409, errors.ConflictError),
    (429, errors.RateLimitError),
    (500, errors.SandboxError),
    (503, errors.UnavailableError),
    (507, errors.NotEnoughSpaceError),
])
def test_control_plane_statuses(status, cls):
    exc = _errors.from_api(status, body(code=status, message="why it failed"))
    assert type(exc) is cls
    assert exc.message == "why it failed"
    assert exc.status == status


def test_control_plane_404_can_mean_another_thing():
    exc = _errors.from_api(404, body(code=404, message="template 'x' not found"),
                           not_found=errors.TemplateError)
    assert isinstance(exc, errors.TemplateError)


def test_non_json_body_keeps_the_text():
    exc = _errors.from_api(500, b"<html>oops</html>")
    assert isinstance(exc, errors.SandboxError) and "oops" in exc.message


def test_proxy_502_for_a_gone_sandbox():
    recorded = body(sandboxId="abc", message="The sandbox was not found", code=502)
    assert isinstance(_errors.from_agent(502, recorded), errors.SandboxNotFoundError)
    assert isinstance(_errors.from_api(502, recorded), errors.SandboxNotFoundError)


@pytest.mark.parametrize("code,cls", [
    ("not_found", errors.FileNotFoundError_),
    ("already_exists", errors.AlreadyExistsError),
    ("invalid_argument", errors.InvalidArgumentError),
    ("permission_denied", errors.PermissionDeniedError),
    ("unauthenticated", errors.AuthenticationError),
    ("deadline_exceeded", errors.TimeoutError_),
    ("internal", errors.SandboxError),
])
def test_connect_unary_errors(code, cls):
    exc = _errors.from_agent(404 if code == "not_found" else 400,
                             body(code=code, message="m"), not_found=errors.FileNotFoundError_)
    assert type(exc) is cls


def test_disk_full_from_files_route_and_from_connect():
    assert isinstance(_errors.from_agent(507, body(code=507, message="no space left on device")),
                      errors.NotEnoughSpaceError)
    assert isinstance(_errors.from_connect("resource_exhausted", "no space left on device"),
                      errors.NotEnoughSpaceError)
    assert isinstance(_errors.from_connect("resource_exhausted", "too many processes"),
                      errors.RateLimitError)


def test_files_route_missing_file():
    exc = _errors.from_agent(404, body(code=404, message="path not found"),
                             not_found=errors.FileNotFoundError_)
    assert isinstance(exc, errors.FileNotFoundError_)


def test_end_stream_messages():
    assert _errors.from_end_stream({}) is None
    exc = _errors.from_end_stream({"error": {"code": "deadline_exceeded", "message": "late"}})
    assert isinstance(exc, errors.TimeoutError_) and exc.message == "late"
