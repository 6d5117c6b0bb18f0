"""A template definition (``hutch.protocol.template``) as a build plan: the layers to make,
each named by the content hash that makes an unchanged rebuild a cache hit, and the shell
that makes each one. Pure: no I/O.

Steps that change files (apt, pip, npm, run, copy, add) each become one layer; steps that
change how later steps and sandboxes run (env, workdir, user) only change the state carried
forward, which is part of every later layer's key: the same RUN under another user or
directory is another layer. A layer's key covers its parent's key, the step, that state and
the digests of the files it copies, so changing one step rebuilds it and everything above it,
and nothing below.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass, field
from typing import Mapping, Optional

from hutch.protocol.template import Definition, Step

#: Bumped when the scripts below change what they write for the same step.
PLAN_VERSION = 2
FILE_KINDS = ("apt", "pip", "npm", "run", "copy", "add")


@dataclass(frozen=True)
class State:
    """How a step runs, and later how the template's sandboxes start."""

    env: tuple[tuple[str, str], ...] = ()
    user: str = "root"
    workdir: str = "/"

    def with_env(self, key: str, value: str) -> "State":
        kept = tuple((k, v) for k, v in self.env if k != key)
        return State(kept + ((key, value),), self.user, self.workdir)


@dataclass(frozen=True)
class LayerStep:
    key: str                 # content hash: the layer's name in the cache
    step: Step
    state: State             # in force while it runs
    script: str              # what runs in the build sandbox, as root
    # copy/add: the context files it needs (relative path -> content digest), as resolved
    # by the client from the step's sources and globs.
    inputs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    base: str
    layers: tuple[LayerStep, ...]
    final: State              # the template's env, user and workdir
    start_cmd: Optional[str] = None
    ready_cmd: Optional[str] = None
    labels: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _key(parent: str, step: Step, state: State, inputs: tuple[tuple[str, str], ...]) -> str:
    doc = {"v": PLAN_VERSION, "parent": parent, "step": step.to_json(),
           "state": [list(state.env), state.user, state.workdir], "inputs": list(inputs)}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def _as_user(state: State, command: str) -> str:
    """``command`` in the state's directory, as its user (a login-less switch that keeps
    the environment the build sets)."""
    q = shlex.quote
    inner = f"cd {q(state.workdir)} && {command}"
    if state.user in ("root", "0", "root:root"):
        return f"sh -euc {q(inner)}"
    user, _, group = state.user.partition(":")
    switch = f"runuser -u {q(user)}" + (f" -g {q(group)}" if group else "")
    return f"{switch} -- sh -euc {q(inner)}"


def script(step: Step, state: State, context_dir: str = "/run/hutch/context") -> str:
    """The shell a file-changing step runs as root in its build sandbox. Package managers
    run as root (system-wide installs, as the Dockerfile equivalents do); ``run`` runs as the
    current user in the current directory; copies come from ``context_dir``, where the build
    puts the step's files under their relative paths."""
    q = shlex.quote
    exports = "".join(f"export {k}={q(v)}\n" for k, v in state.env + step.env)
    a = step.args
    if step.kind == "apt":
        body = ("apt-get update\n"
                "apt-get install -y --no-install-recommends " + " ".join(map(q, a)) + "\n"
                "apt-get clean\nrm -rf /var/lib/apt/lists/*\n")
    elif step.kind == "pip":
        body = "pip install --no-cache-dir " + " ".join(map(q, a)) + "\n"
    elif step.kind == "npm":
        body = "npm install -g " + " ".join(map(q, a)) + "\nrm -rf /root/.npm\n"
    elif step.kind == "run":
        # WORKDIR makes its directory when missing (as Docker's does), owned by root.
        body = f"mkdir -p {q(state.workdir)}\n" + _as_user(state, a[0]) + "\n"
    else:
        body = _copy_script(step, context_dir)
    return "set -eu\n" + exports + body


def _copy_script(step: Step, context_dir: str) -> str:
    """COPY/ADD as Docker does them: sources land in the destination (into it when it ends
    in '/' or there are several; as it otherwise), a directory's contents rather than the
    directory, files owned by root unless ``--chown``; ADD unpacks local tar archives. The
    sources are gathered in a staging directory first, so ``--chown``/``--chmod`` touch only
    what was copied, never what was already at the destination."""
    q = shlex.quote
    dest = step.args[-1]
    into = dest.endswith("/") or len(step.args) > 2
    lines = ["stage=$(mktemp -d)"]
    for src in step.args[:-1]:
        # Each match of a glob is one source (the context holds exactly the matches).
        lines.append(f"for src in {_pattern(context_dir + '/' + src.rstrip('/'))}; do")
        lines.append('  [ -e "$src" ] || { echo "no such file in the build context: $src" >&2; '
                     "exit 1; }")
        unpack = ('if [ -f "$src" ] && tar -tf "$src" >/dev/null 2>&1; then '
                  'tar -xf "$src" -C "$stage"; el') if step.kind == "add" else ""
        name = '"$stage"/' if into or step.kind == "add" else '"$stage"/item'
        lines.append(f'  {unpack}if [ -d "$src" ]; then cp -a "$src"/. "$stage"/; '
                     f'else cp -a "$src" {name}; fi')
        lines.append("done")
    for option, tool in (("chown", "chown"), ("chmod", "chmod")):
        value = step.option(option)
        if value:
            lines.append(f"find \"$stage\" -mindepth 1 -exec {tool} {q(value)} {{}} +")
    # Entry by entry: `cp -a stage/. dest` would also give dest itself the staging
    # directory's owner and mode (0700), locking everyone out of, say, /srv.
    each = ('for f in "$stage"/* "$stage"/.[!.]* "$stage"/..?*; do '
            '[ -e "$f" ] || [ -L "$f" ] || continue; cp -a "$f" {}/; done')
    if into:
        lines += [f"mkdir -p {q(dest)}", each.format(q(dest))]
    else:
        parent = dest.rsplit("/", 1)[0] or "/"
        lines += [f"mkdir -p {q(parent)}",
                  f"if [ -e \"$stage\"/item ]; then cp -a \"$stage\"/item {q(dest)}; "
                  f"else mkdir -p {q(dest)} && {each.format(q(dest))}; fi"]
    lines.append('rm -rf "$stage"')
    return "\n".join(lines) + "\n"


def _pattern(path: str) -> str:
    """``path`` for the shell with every character quoted but the glob ones (* ? [ ])."""
    return "".join(c if c in "*?[]" else shlex.quote(c) if not c.isalnum() and c not in "/._-"
                   else c for c in path)


def plan(definition: Definition, base_key: str,
         inputs: Optional[Mapping[int, tuple[tuple[str, str], ...]]] = None,
         start: State = State()) -> Plan:
    """The layers ``definition`` needs over a base whose own key is ``base_key``; ``start``
    is the base's state (its env, user, workdir); ``inputs[i]`` the files step ``i`` copies."""
    inputs = inputs or {}
    state, parent, layers = start, base_key, []
    for index, step in enumerate(definition.steps):
        if step.kind == "env":
            state = state.with_env(step.args[0], step.args[1])
        elif step.kind == "workdir":
            state = State(state.env, state.user, step.args[0])
        elif step.kind == "user":
            state = State(state.env, step.args[0], state.workdir)
        else:
            files = tuple(sorted(inputs.get(index, ())))
            key = _key(parent, step, state, files)
            layers.append(LayerStep(key, step, state, script(step, state), files))
            parent = key
    return Plan(definition.base, tuple(layers), state, definition.start_cmd,
                definition.ready_cmd, definition.labels)
