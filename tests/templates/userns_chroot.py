"""Run a command chrooted into a template's rootfs inside a user namespace that maps id 0 to
``uid_base`` on the host, the way a sandbox sees the template.

usage: python userns_chroot.py ROOTFS UID_BASE COMMAND [ARG...]

The child unshares a user namespace, the parent (host root) writes its id maps, then the child
becomes root inside, chroots and execs. Exits with the command's status.
"""

import ctypes
import os
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWUTS = 0x04000000
RANGE = 65536


def main() -> int:
    rootfs, base, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if libc.unshare(CLONE_NEWUSER | CLONE_NEWUTS) != 0:
                os._exit(125)
            os.write(ready_w, b"u")
            if os.read(go_r, 1) != b"g":
                os._exit(125)
            os.setresgid(0, 0, 0)
            os.setgroups([])
            os.setresuid(0, 0, 0)
            libc.sethostname(b"sandbox", 7)
            os.chroot(rootfs)
            os.chdir("/")
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   "LANG": "C.UTF-8", "HOME": "/root"}
            os.execvpe(argv[0], argv, env)
        except BaseException as e:  # noqa: BLE001 - report and exit the child only
            sys.stderr.write(f"userns_chroot: {e}\n")
            os._exit(126)
    if os.read(ready_r, 1) != b"u":
        os.waitpid(pid, 0)
        return 125
    for kind in ("uid_map", "gid_map"):
        with open(f"/proc/{pid}/{kind}", "w") as f:
            f.write(f"0 {base} {RANGE}\n")
    os.write(go_w, b"g")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
