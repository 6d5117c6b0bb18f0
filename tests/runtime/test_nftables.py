"""Running nftables scripts, against the real kernel: the library context and the nft command
fallback each apply a transaction, report nft's own error (and only the last call's), and
apply calls made at once. Each test works on a table of its own, deleted afterwards whatever
happened (checked with the nft command, independent of the code under test)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess

import pytest

from hutch.errors import RuntimeError_
from hutch.runtime import firewall, nftables

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="nftables needs root")

PREFIX = os.environ.get("HUTCH_TEST_INSTANCE", "hutcht") + "nfttest"
_numbers = itertools.count()


def listing(table: str) -> str:
    done = subprocess.run(["nft", "list", "table", "inet", table], capture_output=True,
                          text=True)
    return done.stdout if done.returncode == 0 else ""


@pytest.fixture
def table():
    name = f"{PREFIX}{os.getpid()}_{next(_numbers)}"
    yield name
    subprocess.run(["nft", "delete", "table", "inet", name], capture_output=True)
    assert listing(name) == ""


@pytest.fixture(scope="module")
def context():
    ctx = nftables.Context()
    yield ctx
    ctx.close()


@pytest.fixture(params=["library", "command"])
def nft(request, context):
    return context if request.param == "library" else nftables.Command()


def make(table: str) -> str:
    return (f"add table inet {table}\n"
            f"add chain inet {table} probe\n"
            f"add set inet {table} seen {{ type ipv4_addr; }}\n"
            f"add element inet {table} seen {{ 192.0.2.1 }}\n")


async def test_a_script_is_applied(nft, table):
    assert listing(table) == ""
    await nft.run(make(table))
    text = listing(table)
    assert "chain probe" in text and "set seen" in text and "192.0.2.1" in text
    assert listing(table) != ""
    assert "192.0.2.1" in await nft.run(f"list set inet {table} seen\n")


async def test_a_failing_script_raises_nft_message_and_applies_nothing(nft, table):
    script = make(table) + f"\nadd rule inet {table} absent accept\n"
    with pytest.raises(RuntimeError_) as caught:
        await nft.run(script)
    message = caught.value.message
    assert message.startswith("nft failed: ")
    assert "Error: Could not process rule: No such file or directory" in message
    # The line at fault is quoted (line 6), with its position.
    assert ":6:" in message and f"add rule inet {table} absent accept" in message
    assert listing(table) == ""     # one transaction: the table was not made either


async def test_an_error_never_shows_in_a_later_call(nft, table):
    with pytest.raises(RuntimeError_, match="first_missing"):
        await nft.run(f"add table inet {table}\nadd rule inet {table} first_missing accept\n")
    # A success after a failure: no leftover error, and its own output only.
    out = await nft.run(make(table) + f"list table inet {table}\n")
    assert "first_missing" not in out and "Error" not in out and "chain probe" in out
    # The next failure carries its own message only.
    with pytest.raises(RuntimeError_) as caught:
        await nft.run(f"add element inet {table} seen {{ not-an-address }}\n")
    assert "not-an-address" in caught.value.message
    assert "first_missing" not in caught.value.message
    assert caught.value.message.count("Error:") == 1
    # A listing's output is not carried into the next call either.
    assert await nft.run(f"add element inet {table} seen {{ 192.0.2.2 }}\n") == ""


async def test_calls_made_at_once_all_apply(nft, table):
    await nft.run(make(table))
    addresses = [f"192.0.2.{i}" for i in range(10, 26)]
    await asyncio.gather(*(nft.run(f"add element inet {table} seen {{ {a} }}\n")
                           for a in addresses))
    text = listing(table)
    assert all(a in text for a in addresses)


async def test_the_firewall_runs_its_scripts_through_the_process_backend(table):
    assert isinstance(nftables.backend(), nftables.Context)   # the library is installed here
    await firewall.nft(make(table))
    assert listing(table) != ""
    with pytest.raises(RuntimeError_, match="nft failed: .*Error"):
        await firewall.nft(f"add rule inet {table} absent accept\n")
    await firewall.nft(f"delete table inet {table}\n")
    assert listing(table) == ""


def test_without_the_library_the_command_is_used(monkeypatch, caplog):
    with pytest.raises(OSError):
        nftables.Context("libnftables-absent.so.9")

    def absent():
        raise OSError("libnftables.so.1: cannot open shared object file")

    monkeypatch.setattr(nftables, "_backend", None)
    monkeypatch.setattr(nftables, "Context", absent)
    with caplog.at_level(logging.DEBUG, logger="hutch.runtime.nftables"):
        chosen = nftables.backend()
        assert nftables.backend() is chosen
    assert isinstance(chosen, nftables.Command)
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]   # logged once


def test_the_context_leaves_nothing_for_started_programs_to_inherit():
    before = set(os.listdir("/proc/self/fd"))
    ctx = nftables.Context()
    try:
        opened = {int(fd) for fd in set(os.listdir("/proc/self/fd")) - before}
        assert opened   # its netlink socket
        for fd in opened:
            try:
                assert not os.get_inheritable(fd)
            except OSError:
                pass    # the listing's own descriptor, closed since
    finally:
        ctx.close()


def test_the_worker_thread_takes_no_signals():
    blocked = nftables._worker.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
    assert {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM} <= blocked
    assert signal.SIGSEGV not in blocked
