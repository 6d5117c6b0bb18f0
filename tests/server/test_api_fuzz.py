"""Property-based fuzzing of the control plane against its own OpenAPI spec.

Every operation in spec/openapi.json gets requests generated from its schema (valid ones and,
through schemathesis' negative mode, invalid ones), sent with the admin key to the session's
real server. Whatever comes in, the answer is never a server error, and every answer the server gives
conforms to what the spec says it gives (status codes, content types, bodies). The examples are
derandomized, so a run is reproducible. Sandboxes a generated create happens to make are
killed afterwards; deleting keys is left out, as a generated id could only ever miss or, worse,
revoke the key the rest of the suite uses, and so are template builds (each step a build
sandbox: tests/server/test_templates.py covers them).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import schemathesis
from schemathesis.specs.openapi import checks
from hypothesis import HealthCheck, given, settings

SPEC = Path(__file__).resolve().parents[2] / "spec" / "openapi.json"

pytestmark = pytest.mark.timeout(900)


def _sandbox_ids(server) -> set[str]:
    req = urllib.request.Request(server.url + "/sandboxes",
                                 headers={"X-API-KEY": server.api_key})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return {s["sandboxID"] for s in json.loads(resp.read())}


@pytest.fixture(scope="module")
def api(hutch_server):
    before = _sandbox_ids(hutch_server)
    schema = schemathesis.openapi.from_path(SPEC)
    schema.config.update(base_url=hutch_server.url)
    yield schema.exclude(path="/keys/{id}", method="DELETE").exclude(path="/templates",
                                                                      method="POST")
    for sandbox_id in _sandbox_ids(hutch_server) - before:
        req = urllib.request.Request(f"{hutch_server.url}/sandboxes/{sandbox_id}",
                                     method="DELETE", headers={"X-API-KEY": hutch_server.api_key})
        try:
            urllib.request.urlopen(req, timeout=60).read()
        except OSError:
            pass


@pytest.fixture(scope="module")
def operations(api):
    return [result.ok() for result in api.get_all_operations()]


#: Schema-valid requests may still be refused for reasons a schema cannot state: limits set
#: in the server's configuration, templates and sandboxes that do not exist.
#: A documented 501 is judged by the assertion in the probe, not as a failure.
EXCLUDED = [checks.positive_data_acceptance, schemathesis.checks.not_a_server_error]


def test_no_request_makes_the_server_fail(api, operations, hutch_server):
    assert len(operations) > 20
    failed = []
    for operation in operations:
        @settings(max_examples=25, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def probe(case) -> None:
            case.headers = {**(case.headers or {}), "X-API-KEY": hutch_server.api_key}
            response = case.call(timeout=60)
            # 501 is the documented answer of E2B paths hutch does not serve (checked below
            # against the spec like every other status); any other 5xx is a failure.
            assert response.status_code < 500 or response.status_code == 501, (
                case.as_curl_command(), response.text[:500])
            case.validate_response(response, excluded_checks=EXCLUDED)

        try:
            probe()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - all probed, all reported
            failed.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failed, "\n\n".join(failed)
