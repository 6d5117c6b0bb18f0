"""hutch's SDK keeps the e2b SDK's call shapes: the same names, and the same positional
order for the parameters both have, so code written for E2B runs against hutch unchanged."""

from __future__ import annotations

import inspect

import pytest

import hutch
import hutch.sdk as sdk

e2b = pytest.importorskip("e2b")
from e2b.sandbox_async.commands.command import Commands as E2bAsyncCommands  # noqa: E402
from e2b.sandbox_async.commands.command_handle import AsyncCommandHandle as E2bAsyncHandle  # noqa: E402
from e2b.sandbox_async.commands.pty import Pty as E2bAsyncPty  # noqa: E402
from e2b.sandbox_async.filesystem.filesystem import Filesystem as E2bAsyncFilesystem  # noqa: E402
from e2b.sandbox_sync.commands.command import Commands as E2bCommands  # noqa: E402
from e2b.sandbox_sync.commands.command_handle import CommandHandle as E2bHandle  # noqa: E402
from e2b.sandbox_sync.filesystem.filesystem import Filesystem as E2bFilesystem  # noqa: E402

PAIRS = [
    (sdk.AsyncCommands, E2bAsyncCommands,
     ["run", "connect", "kill", "send_stdin", "close_stdin", "list"]),
    (sdk.Commands, E2bCommands, ["run", "connect", "kill", "send_stdin", "close_stdin", "list"]),
    (sdk.AsyncPty, E2bAsyncPty, ["create", "connect", "kill", "send_stdin", "resize"]),
    (sdk.AsyncFilesystem, E2bAsyncFilesystem,
     ["read", "write", "write_files", "list", "exists", "get_info", "remove", "rename",
      "make_dir", "watch_dir"]),
    (sdk.Filesystem, E2bFilesystem,
     ["read", "write", "write_files", "list", "exists", "get_info", "remove", "rename",
      "make_dir"]),
    (sdk.AsyncCommandHandle, E2bAsyncHandle, ["kill", "send_stdin", "close_stdin", "disconnect"]),
    (sdk.CommandHandle, E2bHandle, ["wait", "kill", "send_stdin", "close_stdin", "disconnect"]),
]


def _params(fn) -> list:
    return [p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]


@pytest.mark.parametrize("ours,theirs,methods", PAIRS,
                         ids=[f"{o.__name__}" for o, _, _ in PAIRS])
def test_shared_parameters_keep_their_order(ours, theirs, methods):
    for name in methods:
        mine, e2b_params = _params(getattr(ours, name)), _params(getattr(theirs, name))
        shared = [p for p in e2b_params if p in mine]
        assert shared == [p for p in mine if p in e2b_params], name
        # Everything up to the first parameter hutch lacks lines up position by position.
        prefix = []
        for param in e2b_params:
            if param not in mine:
                break
            prefix.append(param)
        assert mine[:len(prefix)] == prefix, name


def test_create_keeps_the_leading_parameters():
    expected = ["template", "timeout", "metadata", "envs", "secure", "allow_internet_access"]
    for cls in (hutch.Sandbox, hutch.AsyncSandbox):
        assert _params(cls.create.__func__)[1:len(expected) + 1] == expected


def test_public_names():
    for name in ("Sandbox", "AsyncSandbox", "CommandResult", "CommandHandle",
                 "AsyncCommandHandle", "EntryInfo", "SandboxInfo"):
        assert getattr(hutch, name) is getattr(sdk, name)
    assert sorted(sdk.__all__) == sdk.__all__


def test_constructor_and_ports_keep_e2b_shapes():
    for ours, theirs in ((hutch.Sandbox, e2b.Sandbox), (hutch.AsyncSandbox, e2b.AsyncSandbox)):
        assert _params(ours.get_host) == _params(theirs.get_host) == ["port"]
        # The constructor takes create()'s arguments, in create()'s order.
        assert _params(ours.__init__) == _params(ours.create.__func__)[1:]
