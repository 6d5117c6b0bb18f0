"""Linux users inside the sandbox, and doing file work (and starting processes) *as* one of them.

File operations must honour the requesting user's permissions and create files owned by that
user. The agent runs as root, so each non-root user gets a small pool of worker threads whose
filesystem identity is switched with the raw ``setfsuid``/``setfsgid``/``setgroups`` syscalls.
Raw, because these credentials are per thread in the kernel while glibc's wrappers broadcast
``setgroups`` to every thread of the process, which would change the agent itself. Switching the
fsuid away from 0 also drops the filesystem capabilities of that thread (DAC override and
friends), so the kernel does the permission checks exactly as for the user's own processes.

The event loop's thread also becomes a user for an instant (:meth:`_Creds.lend`) to start
that user's commands: a child made by vfork takes its parent thread's identity, so it needs no
identity change of its own, and once it execs it has lost the saved root and every capability,
as a setuid in the child would give (see processes.py).
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

from ..errors import AuthenticationError, HutchError

T = TypeVar("T")

#: Syscall numbers (setfsuid, setfsgid, setgroups) per machine; the kernel ABI never changes them.
_SYSCALLS = {
    "x86_64": (122, 123, 116),
    "aarch64": (151, 152, 159),
    "arm64": (151, 152, 159),
    "riscv64": (151, 152, 159),
    "ppc64le": (139, 138, 81),
    "s390x": (215, 216, 206),
}

#: Syscall numbers (setresuid, setresgid) per machine, for :meth:`_Creds.lend`. Where a
#: machine is missing, commands change identity in the child instead (slower, same result).
_ID_SYSCALLS = {
    "x86_64": (117, 119),
    "aarch64": (147, 149),
    "arm64": (147, 149),
    "riscv64": (147, 149),
}

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class User:
    """A resolved account: names and ids plus the supplementary groups."""

    __slots__ = ("name", "uid", "gid", "home", "shell", "groups")

    def __init__(self, entry: pwd.struct_passwd):
        self.name = entry.pw_name
        self.uid = entry.pw_uid
        self.gid = entry.pw_gid
        self.home = entry.pw_dir or "/"
        self.shell = entry.pw_shell or "/bin/sh"
        self.groups: List[int] = os.getgrouplist(entry.pw_name, entry.pw_gid)

    def workdir(self) -> str:
        """The home directory, or / when the account has none on disk (e.g. ``nobody``)."""
        return self.home if os.path.isdir(self.home) else "/"

    def environ(self) -> Dict[str, str]:
        """The login variables every process of this user gets."""
        return {
            "HOME": self.home,
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": self.shell,
            "PATH": DEFAULT_PATH,
        }


_cache: Dict[str, Optional[User]] = {}
_cache_key: tuple = ()


def _account_files_key() -> tuple:
    out = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            st = os.stat(path)
            out.append((st.st_mtime_ns, st.st_ino, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _find(name: str) -> Optional[User]:
    """Look an account up, cached until /etc/passwd or /etc/group change (useradd inside)."""
    global _cache_key
    key = _account_files_key()
    if key != _cache_key:
        _cache.clear()
        _cache_key = key
    if name not in _cache:
        try:
            _cache[name] = User(pwd.getpwnam(name))
        except KeyError:
            _cache[name] = None
    return _cache[name]


def lookup(name: str) -> User:
    user = _find(name)
    if user is None:
        raise AuthenticationError(f"user {name!r} does not exist")
    return user


def default_user_name(configured: Optional[str]) -> str:
    """The user for requests that name none: from /init, else ``user`` if present, else root."""
    if configured:
        return configured
    return "user" if _find("user") is not None else "root"


def basic_auth_user(header: Optional[str]) -> Optional[str]:
    """The user name in ``Authorization: Basic base64("<user>:")``, or None if absent."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        raise AuthenticationError("unsupported authorization scheme")
    try:
        decoded = base64.b64decode(token.strip()).decode()
    except ValueError:
        raise AuthenticationError("malformed basic authorization") from None
    return decoded.split(":", 1)[0] or None


class _Creds:
    """Switches the calling thread's identity with raw syscalls (loaded lazily)."""

    def __init__(self) -> None:
        import ctypes

        machine = os.uname().machine
        numbers = _SYSCALLS.get(machine)
        if numbers is None:
            raise HutchError(f"no syscall table for {machine}")
        self._fsuid, self._fsgid, self._setgroups = numbers
        self._machine = machine
        self._ids_numbers = _ID_SYSCALLS.get(machine)   # (setresuid, setresgid), if known
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes

    def apply(self, user: User) -> None:
        c = self._ctypes
        groups = (c.c_uint * max(1, len(user.groups)))(*user.groups)
        if self._libc.syscall(self._setgroups, c.c_long(len(user.groups)), groups) != 0:
            err = c.get_errno()
            raise OSError(err, os.strerror(err))
        # set*id-fs returns the previous id and gives no error; verify by a second call.
        self._libc.syscall(self._fsgid, c.c_long(user.gid))
        self._libc.syscall(self._fsuid, c.c_long(user.uid))
        if self._libc.syscall(self._fsuid, c.c_long(-1)) != user.uid:
            raise OSError("setfsuid did not take effect")

    def _ids(self, setresuid_args: tuple, setresgid_args: tuple, groups: List[int],
             uid_first: bool) -> None:
        if self._ids_numbers is None:
            raise OSError(f"no setresuid syscall number for {self._machine}")
        setresuid, setresgid = self._ids_numbers
        c = self._ctypes
        array = (c.c_uint * max(1, len(groups)))(*groups)
        steps = [(self._setgroups, (c.c_long(len(groups)), array)),
                 (setresgid, tuple(c.c_long(i) for i in setresgid_args)),
                 (setresuid, tuple(c.c_long(i) for i in setresuid_args))]
        # Changing groups and gids needs CAP_SETGID, which holds only while the euid is 0:
        # become the user last, and root again first.
        for number, args in (reversed(steps) if uid_first else steps):
            if self._libc.syscall(number, *args) != 0:
                err = c.get_errno()
                raise OSError(err, os.strerror(err))

    def lend(self, user: User) -> tuple:
        """Make the calling thread ``user`` for now: real and effective uid and gid, and the
        groups. The saved ids stay 0, so :meth:`take_back` can return to root; meanwhile the
        thread has no effective capability. Returns what ``take_back`` needs."""
        saved = os.getgroups()
        try:
            self._ids((user.uid, user.uid, -1), (user.gid, user.gid, -1), user.groups, False)
        except OSError:
            self.take_back(saved)
            raise
        return saved

    def take_back(self, groups: List[int]) -> None:
        try:
            self._ids((0, 0, -1), (0, 0, -1), groups, True)
        except OSError:
            os.abort()  # the event loop's thread cannot stay a user: see restore()

    def current(self) -> tuple:
        """The calling thread's (fsuid, fsgid, groups), for :meth:`restore`."""
        c = self._ctypes
        return (self._libc.syscall(self._fsuid, c.c_long(-1)),
                self._libc.syscall(self._fsgid, c.c_long(-1)), os.getgroups())

    def restore(self, saved: tuple) -> None:
        c = self._ctypes
        fsuid, fsgid, groups = saved
        self._libc.syscall(self._fsuid, c.c_long(fsuid))
        self._libc.syscall(self._fsgid, c.c_long(fsgid))
        array = (c.c_uint * max(1, len(groups)))(*groups)
        if (self._libc.syscall(self._setgroups, c.c_long(len(groups)), array) != 0
                or self._libc.syscall(self._fsuid, c.c_long(-1)) != fsuid):
            # The agent's own thread could not get its identity back: nothing it does from
            # here on would be right, so it stops rather than act as the wrong user.
            os.abort()


_creds: Optional[_Creds] = None


def thread_creds() -> _Creds:
    global _creds
    if _creds is None:
        _creds = _Creds()
    return _creds


@contextmanager
def acting_as(user: User) -> Iterator[None]:
    """Act on files as ``user`` on the calling thread until the block ends.

    For the little file work that must happen on the event loop's own thread (a watcher
    describing what just changed, or watching a directory the moment it appears): the block
    is synchronous, so nothing else runs on the thread meanwhile, and the kernel checks every
    access against the user's ids just as on the user's worker threads."""
    if user.uid == 0:
        yield
        return
    creds = thread_creds()
    saved = creds.current()
    try:
        creds.apply(user)
        yield
    finally:
        creds.restore(saved)


class Identities:
    """One executor per user; root work runs on a plain pool (the agent already is root)."""

    def __init__(self, workers: int = 4) -> None:
        self._workers = workers
        self._pools: Dict[int, "ThreadPoolExecutor"] = {}

    def _pool(self, user: User) -> "ThreadPoolExecutor":
        pool = self._pools.get(user.uid)
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor  # on first file operation only

            if user.uid == 0:
                pool = ThreadPoolExecutor(self._workers, thread_name_prefix="fs-root")
            else:
                pool = ThreadPoolExecutor(
                    self._workers, thread_name_prefix=f"fs-{user.uid}", initializer=thread_creds().apply,
                    initargs=(user,),
                )
            self._pools[user.uid] = pool
        return pool

    async def run(self, user: User, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` in a thread that acts on files as ``user``."""
        return await asyncio.get_running_loop().run_in_executor(self._pool(user), fn, *args)

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self._pools.clear()


def may_act_as_root(user: User) -> bool:
    """Whether ``user`` may already run anything as root without a password (a sudoers rule
    ``<user or %group> ALL=(ALL...) NOPASSWD: ALL``, as the built-in templates give ``user``).

    For such a user, file writes that their own permissions refuse are done as root, with what
    they create owned by them: E2B's behaviour (its daemon writes as root and hands the file
    over), which code written for E2B relies on (``files.write("/data.csv", ...)``). It grants
    nothing the user could not take with ``sudo``; any other user keeps exactly their rights.
    """
    if user.uid == 0:
        return True
    import grp

    names = {user.name}
    for gid in user.groups:
        try:
            names.add("%" + grp.getgrgid(gid).gr_name)
        except KeyError:
            pass
    paths = ["/etc/sudoers"]
    try:
        paths += sorted(os.path.join("/etc/sudoers.d", f) for f in os.listdir("/etc/sudoers.d"))
    except OSError:
        pass
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] in names and "NOPASSWD:" in line \
                    and line.rstrip().endswith("ALL") and "ALL=(ALL" in "".join(words[1:3]):
                return True
    return False
