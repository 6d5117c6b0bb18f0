"""Pieces of the agent's fork into a sandbox that need no sandbox: where `sleep` is in a
stack of layers, and which cgroups a process is in."""

from __future__ import annotations

import os
from pathlib import Path

from hutch.runtime import cgroup
from hutch.runtime.local import _find_in_layers


def test_sleep_is_found_in_the_topmost_layer_that_names_it(tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "usr/bin").mkdir(parents=True)
    (low / "usr/bin/sleep").write_text("")
    (high / "usr").mkdir(parents=True)
    names = ("usr/bin/sleep", "bin/sleep")
    assert _find_in_layers((high, low), names) == "/usr/bin/sleep"
    assert _find_in_layers((high,), names) is None
    # /bin a link into /usr, as in a merged-/usr layout
    only_bin = tmp_path / "merged"
    (only_bin / "usr/bin").mkdir(parents=True)
    (only_bin / "bin").symlink_to("usr/bin")
    (only_bin / "usr/bin/sleep").write_text("")
    assert _find_in_layers((only_bin,), ("bin/sleep",)) == "/bin/sleep"


def test_a_whiteout_hides_sleep_of_the_layers_below(tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    (low / "usr/bin").mkdir(parents=True)
    (low / "usr/bin/sleep").write_text("")
    (high / "usr/bin").mkdir(parents=True)
    os.mknod(high / "usr/bin/sleep", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs whiteout
    assert _find_in_layers((high, low), ("usr/bin/sleep",)) is None
    assert _find_in_layers((low,), ("usr/bin/sleep",)) == "/usr/bin/sleep"


def test_procs_files_name_every_hierarchy_this_process_is_in():
    files = cgroup.procs_files_of(os.getpid())
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    assert len(files) == len(lines)
    for f in files:
        assert f.name == "cgroup.procs" and str(os.getpid()) in f.read_text().split()
