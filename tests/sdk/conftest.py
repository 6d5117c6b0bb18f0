"""Shared by the async tests and the sync tests generated from them."""

from __future__ import annotations

import pytest


@pytest.fixture
def opts(hutch_server):
    """Connection options for a real hutch server (the session's ``hutch_server``)."""
    return {"url": hutch_server.url, "api_key": hutch_server.api_key}


@pytest.fixture(scope="module")
def module_opts(hutch_server):
    return {"url": hutch_server.url, "api_key": hutch_server.api_key}
