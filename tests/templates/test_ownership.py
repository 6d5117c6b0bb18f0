"""Shifting owners into the sandbox id range, on small trees made here."""

from __future__ import annotations

import os
import stat

import pytest

from hutch.templates.ownership import shift


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "home/user").mkdir(parents=True)
    sudo = root / "usr/bin/sudo"
    sudo.write_bytes(b"\x7fELF")
    os.chmod(sudo, 0o4755)
    chage = root / "usr/bin/chage"
    chage.write_bytes(b"x")
    os.chown(chage, 0, 42)
    os.chmod(chage, 0o2755)
    (root / "home/user/notes").write_text("hi")
    os.chown(root / "home/user", 1000, 1000)
    os.chown(root / "home/user/notes", 1000, 1000)
    os.link(root / "home/user/notes", root / "usr/bin/notes-link")
    os.symlink("/nowhere", root / "usr/bin/dangling")
    os.lchown(root / "usr/bin/dangling", 5, 6)
    return root


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def test_shift_adds_the_base_and_keeps_special_bits(tree):
    tally = shift(tree, 100000)
    assert tally.entries == 9 and tally.bytes > 0   # the hard link counted once
    assert owner(tree) == (100000, 100000)
    assert owner(tree / "home/user") == (101000, 101000)
    assert owner(tree / "home/user/notes") == (101000, 101000)
    assert owner(tree / "usr/bin/notes-link") == (101000, 101000)
    assert owner(tree / "usr/bin/dangling") == (100005, 100006)
    sudo = os.stat(tree / "usr/bin/sudo")
    assert (sudo.st_uid, stat.S_IMODE(sudo.st_mode)) == (100000, 0o4755)
    chage = os.stat(tree / "usr/bin/chage")
    assert (chage.st_gid, stat.S_IMODE(chage.st_mode)) == (100042, 0o2755)


def test_file_capabilities_survive(tree):
    ping = tree / "usr/bin/ping"
    ping.write_bytes(b"x")
    os.chmod(ping, 0o755)
    # v2 capability xattr for cap_net_raw (bit 13), effective flag set.
    caps = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)
    os.setxattr(ping, "security.capability", caps)
    shift(tree, 100000)
    assert os.getxattr(ping, "security.capability") == caps


def test_shifting_twice_is_refused(tree):
    shift(tree, 100000)
    with pytest.raises(ValueError, match="outside 0..65535"):
        shift(tree, 100000)
