"""The sync SDK's deadline thread: one thread fires every pending deadline of the process."""

from __future__ import annotations

import os
import threading

from hutch.sdk._sync._backend import _Deadlines


def test_deadlines_fire_earliest_first_whatever_the_order_added():
    deadlines = _Deadlines()
    fired: list = []
    done = threading.Event()
    deadlines.add(0.3, lambda: (fired.append("late"), done.set()))
    deadlines.add(0.05, lambda: fired.append("early"))
    assert done.wait(10)
    assert fired == ["early", "late"]


def test_a_cancelled_deadline_never_fires():
    deadlines = _Deadlines()
    fired: list = []
    done = threading.Event()
    entry = deadlines.add(0.05, lambda: fired.append("cancelled"))
    deadlines.cancel(entry)
    deadlines.cancel(entry)  # twice is harmless
    deadlines.add(0.2, done.set)
    assert done.wait(10)
    assert fired == []


def test_cancelled_entries_do_not_pile_up():
    # A process making many bounded calls with long timeouts must not keep an entry per call
    # until each would have expired.
    deadlines = _Deadlines()
    for _ in range(1000):
        deadlines.cancel(deadlines.add(3600, lambda: None))
    assert len(deadlines._heap) < 200


def test_a_forked_child_has_working_deadlines():
    deadlines = _Deadlines()
    deadlines.cancel(deadlines.add(3600, lambda: None))  # the parent's thread is running
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its deadline must fire although the thread stayed behind
        try:
            fired = threading.Event()
            deadlines.add(0.01, fired.set)
            os.write(write_end, b"y" if fired.wait(10) else b"n")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"y"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
