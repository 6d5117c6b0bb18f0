"""Run a layer's build script over its parent layers, as the sandbox's root would.

usage: python -m hutch.templates.layer_exec SPEC.json

Runs as host root, in its own process so that everything it sets up dies with it:

1. a private mount namespace holding an overlay of the parent layers (read-only lower dirs)
   with the new layer as the upper dir, plus /proc (showing only the build's processes), a
   /dev of a few harmless devices, and the host's resolv.conf (the build downloads packages;
   the template's own resolv.conf stays empty). None of these mounts touches the layer;
2. a child in a new user namespace mapping 0..65535 to ``uid_base``.. (the map is written by
   this process, which is root outside), chrooted into the overlay, running the script.

Every file the script creates is thus owned by the shifted ids already, and deletions of lower
files become overlay whiteouts in the upper dir, which is exactly a layer.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
ID_RANGE = 65536
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {target}")


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    merged = spec["merged"]
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount("none", "/", None, MS_REC | MS_PRIVATE, None)
    lower = ":".join(spec["lower"])
    _mount("overlay", merged, "overlay", 0,
           f"lowerdir={lower},upperdir={spec['upper']},workdir={spec['work']}")
    # The host's procfs, but showing only the build's own processes.
    _mount("proc", f"{merged}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "hidepid=invisible")
    # A minimal /dev: a tmpfs holding binds of the harmless character devices only.
    _mount("tmpfs", f"{merged}/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        open(f"{merged}/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"{merged}/dev/{name}", None, MS_BIND, None)
    os.symlink("/proc/self/fd", f"{merged}/dev/fd")
    os.mkdir(f"{merged}/dev/shm")   # POSIX semaphores (Python's multiprocessing) live here
    _mount("tmpfs", f"{merged}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           "mode=1777,size=64m")
    _mount(spec["resolv_conf"], f"{merged}/etc/resolv.conf", None, MS_BIND, None)

    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _check(_libc.unshare(CLONE_NEWUSER), "unshare user namespace")
            os.write(ready_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(125)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            os.chroot(merged)
            os.chdir("/")
            os.execve("/bin/sh", ["/bin/sh", "-euc", spec["script"]], spec["env"])
        except BaseException as e:  # noqa: BLE001 - report, then end the child only
            sys.stderr.write(f"layer build: {e}\n")
            os._exit(126)
    if os.read(ready_r, 1) != b"u":
        os.waitpid(pid, 0)
        return 125
    base = int(spec["uid_base"])
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as f:
            f.write(f"0 {base} {ID_RANGE}\n")
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
