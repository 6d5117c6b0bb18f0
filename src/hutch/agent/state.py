"""What the agent knows about its sandbox: set once by ``POST /init``, read by every route."""

from __future__ import annotations

import os
from typing import Dict, Optional

from ..errors import AuthenticationError, InvalidArgumentError
from .processes import ProcessTable
from .users import Identities, User, default_user_name, lookup

try:
    # The constant-time comparison itself, without hmac's import of hashlib and with it
    # OpenSSL (several MiB of every sandbox's memory, for checking a token on each request).
    from _operator import _compare_digest
except ImportError:  # another Python implementation
    from hmac import compare_digest as _compare_digest


#: Variables that configure the agent's own interpreter, never passed on to processes.
PRIVATE_ENV = ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONHOME")


def inherited_env(environ: Dict[str, str]) -> Dict[str, str]:
    """The part of the agent's environment that every process inherits."""
    return {k: v for k, v in environ.items() if k not in PRIVATE_ENV and not k.startswith("HUTCH_AGENT_")}


class AgentState:
    """Sandbox-wide settings plus the tables of live processes and watchers."""

    def __init__(self, base_env: Optional[Dict[str, str]] = None) -> None:
        self.base_env = inherited_env(os.environ if base_env is None else base_env)
        self.env_vars: Dict[str, str] = {}
        self.access_token: Optional[str] = None
        self.default_user: Optional[str] = None
        #: Where commands start when they name no directory (a template's WORKDIR); None:
        #: the user's home.
        self.default_workdir: Optional[str] = None
        self.processes = ProcessTable()
        self.identities = Identities()
        self.watchers: Dict[str, object] = {}
        #: The code interpreter's supervisor, in sandboxes that have one (see server.run).
        self.interpreter = None

    def init(self, env_vars: Optional[Dict[str, str]], access_token: Optional[str], default_user: Optional[str],
             default_workdir: Optional[str] = None) -> None:
        """Apply ``POST /init``. Fields that are absent keep their value; null clears the token."""
        if default_workdir is not None:
            if not isinstance(default_workdir, str) or not default_workdir.startswith("/"):
                raise InvalidArgumentError("defaultWorkdir must be an absolute path")
            self.default_workdir = default_workdir
        if env_vars is not None:
            self.env_vars = {str(k): str(v) for k, v in env_vars.items()}
        self.access_token = access_token or None
        if default_user:
            lookup(default_user)  # fail now, not on the first command
            self.default_user = default_user
        if self.interpreter is not None:
            env = dict(self.base_env)
            env.update(self.env_vars)
            self.interpreter.configure(env)

    def token_ok(self, presented: Optional[str]) -> bool:
        if self.access_token is None:
            return True
        return presented is not None and _compare_digest(presented.encode(), self.access_token.encode())

    def user(self, name: Optional[str]) -> User:
        """The account a request acts as: the named one, or the sandbox default."""
        return lookup(name or default_user_name(self.default_user))

    def process_env(self, user: User, call_envs: Dict[str, str]) -> Dict[str, str]:
        """Environment of a new process, later layers winning:

        the agent's own environment (the template's variables, as the runtime started the
        agent with them, minus the agent's private ones) < the user's login variables
        (HOME, USER, LOGNAME, SHELL; PATH only if the template sets none) < the sandbox env
        from ``/init`` < the call's own ``envs``.
        """
        env = dict(self.base_env)
        login = user.environ()
        if "PATH" in env:
            del login["PATH"]
        env.update(login)
        env.update(self.env_vars)
        env.update(call_envs)
        return env

    @staticmethod
    def resolve(user: User, path: Optional[str]) -> str:
        """An absolute, normalized path; relative ones are taken from the user's home."""
        if not path:
            return user.home
        if path == "~" or path.startswith("~/"):
            path = user.home + path[1:]
        if not os.path.isabs(path):
            path = os.path.join(user.home, path)
        return os.path.normpath(path)

    def close(self) -> None:
        self.processes.kill_all()
        for watcher in list(self.watchers.values()):
            inner = getattr(watcher, "watcher", None)
            if inner is not None:
                inner.close()
        self.watchers.clear()
        self.identities.shutdown()


def require(state: AgentState, token: Optional[str]) -> None:
    if not state.token_ok(token):
        raise AuthenticationError("missing or invalid access token")
