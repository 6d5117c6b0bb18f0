"""A code-interpreter sandbox shared by a module's tests (kernels take a while to start)."""

from __future__ import annotations

import pytest

from hutch import Sandbox


@pytest.fixture(scope="module")
def ci(code_interpreter):
    hutch_server = code_interpreter
    sbx = Sandbox.create(template="code-interpreter", url=hutch_server.url,
                         api_key=hutch_server.api_key, metadata={"suite": "interpreter"})
    try:
        yield sbx
    finally:
        sbx.kill()
