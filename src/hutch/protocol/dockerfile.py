"""Dockerfiles into template definitions (``template.py``). No I/O.

The instructions a template needs are understood: FROM (one stage), RUN, COPY and ADD
(several sources, globs, ``--chown``, ``--chmod``), ENV, ARG, WORKDIR, USER, CMD and
ENTRYPOINT (together, the start command), LABEL. Anything else is an error naming its line
rather than something silently dropped: an instruction ignored would build a template that is
not what the file says.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from typing import Optional

from hutch.errors import InvalidArgumentError
from hutch.protocol.template import Definition, Step

_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_UNSUPPORTED = {
    "EXPOSE": "ports need no declaring: every port a sandbox listens on is reachable "
              "through hutch",
    "HEALTHCHECK": "use a ready command (Template.start_cmd(..., ready_cmd=...))",
    "VOLUME": "sandboxes have no volumes",
    "STOPSIGNAL": "sandboxes stop with SIGKILL of their whole tree",
    "SHELL": "RUN always uses /bin/sh -c",
    "ONBUILD": "templates have no build triggers",
    "MAINTAINER": "use LABEL maintainer=...",
}


def _error(number: int, text: str, why: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"Dockerfile line {number}: {why}: {text.strip()[:120]}")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, instruction) with continuations joined and comments dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and number == len(out) + 1 and stripped.startswith("#") and "=" in stripped:
            directive, _, value = stripped[1:].partition("=")
            if directive.strip().lower() == "escape" and value.strip() != "\\":
                raise _error(number, raw, "only the default escape character \\ is supported")
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    if pending.strip():
        out.append((start, pending))
    return out


def _substitute(text: str, variables: dict[str, str]) -> str:
    """$NAME, ${NAME}, ${NAME:-default}, ${NAME:+alternative}; unknown names are empty."""
    def replace(m: re.Match) -> str:
        value = variables.get(m.group(1) or m.group(4)) or ""
        if m.group(2) == "-":
            return value or m.group(3)
        if m.group(2) == "+":
            return m.group(3) if value else ""
        return value
    return _VARIABLE.sub(replace, text)


def _json_list(rest: str) -> Optional[list[str]]:
    """The exec (JSON array) form, or None when ``rest`` is not one."""
    if not rest.startswith("["):
        return None
    try:
        value = json.loads(rest)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _pairs(rest: str, number: int, line: str, legacy: bool) -> list[tuple[str, str]]:
    """ENV/LABEL arguments: ``k=v k2="v 2"``, or the legacy ``ENV k some value``."""
    try:
        words = shlex.split(rest, posix=True)
    except ValueError as exc:
        raise _error(number, line, f"unbalanced quotes ({exc})") from None
    if legacy and words and "=" not in words[0]:
        if len(words) < 2:
            raise _error(number, line, "expected NAME VALUE or NAME=VALUE")
        return [(words[0], rest.split(None, 1)[1].strip())]
    pairs = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise _error(number, line, f"expected NAME=VALUE, got {word!r}")
        pairs.append((key, value))
    return pairs


def _flags(rest: str, allowed: tuple[str, ...], number: int, line: str
           ) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, sep, value = word[2:].partition("=")
        if name not in allowed or not sep:
            raise _error(number, line, f"unsupported flag --{name}"
                         + (" (one stage only: no --from)" if name == "from" else ""))
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse(text: str, build_args: Optional[dict[str, str]] = None) -> Definition:
    """The template a Dockerfile describes; ``build_args`` as ``--build-arg`` gives them."""
    given = dict(build_args or {})
    args: dict[str, str] = {}          # ARGs in scope, with their values
    global_args: dict[str, str] = {}   # those declared before FROM
    env: dict[str, str] = {}           # ENV so far (substituted like Docker does)
    base: Optional[str] = None
    steps: list[Step] = []
    labels: list[tuple[str, str]] = []
    entrypoint: Optional[list[str] | str] = None
    cmd: Optional[list[str] | str] = None
    workdir = "/"
    for number, line in _logical_lines(text):
        word, *more = line.strip().split(None, 1)
        instruction, rest = word.upper(), (more[0].strip() if more else "")
        scope = {**args, **env}
        if instruction in _UNSUPPORTED:
            raise _error(number, line, f"{instruction} is not supported ({_UNSUPPORTED[instruction]})")
        if instruction == "ARG":
            name, sep, default = rest.partition("=")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise _error(number, line, "expected ARG NAME or ARG NAME=default")
            if name in given:
                args[name] = given[name]
            elif sep:
                try:
                    words = shlex.split(default) if default else [""]
                except ValueError as exc:
                    raise _error(number, line, f"unbalanced quotes ({exc})") from None
                args[name] = _substitute(words[0] if len(words) == 1 else default, scope)
            else:                      # redeclared after FROM: keeps the value before it
                args[name] = global_args.get(name, "")
            continue
        if instruction == "FROM":
            if base is not None:
                raise _error(number, line, "one stage only (a second FROM)")
            flags, rest = _flags(rest, (), number, line)
            ref = _substitute(rest.split()[0] if rest else "", args)
            if len(rest.split()) not in (1, 3) or (len(rest.split()) == 3
                                                    and rest.split()[1].upper() != "AS"):
                raise _error(number, line, "expected FROM image-or-template [AS name]")
            if ref == "scratch":
                raise _error(number, line, "FROM scratch has nothing to run a sandbox with")
            base = ref
            # ARGs before FROM serve FROM only (Docker's scope rule); redeclared, they keep
            # their value.
            global_args, args = args, {}
            continue
        if base is None:
            raise _error(number, line, "the first instruction must be FROM (or ARG)")
        if instruction == "RUN":
            exec_form = _json_list(rest)
            command = shlex.join(exec_form) if exec_form is not None else rest
            if not command.strip():
                raise _error(number, line, "RUN needs a command")
            steps.append(Step("run", (command,), env=tuple(args.items())))
        elif instruction in ("COPY", "ADD"):
            flags, rest = _flags(rest, ("chown", "chmod"), number, line)
            words = _json_list(rest)
            if words is None:
                try:
                    words = shlex.split(rest)
                except ValueError as exc:
                    raise _error(number, line, f"unbalanced quotes ({exc})") from None
            words = [_substitute(w, scope) for w in words]
            if len(words) < 2:
                raise _error(number, line, f"{instruction} needs a source and a destination")
            if instruction == "ADD" and any(re.match(r"[a-z]+://", w) for w in words[:-1]):
                raise _error(number, line, "ADD from a URL is not supported (download it in "
                                           "a RUN step, where the egress policy applies)")
            dest = words[-1]
            directory = dest.endswith("/") or dest in (".", "..")
            dest = posixpath.normpath(posixpath.join(workdir, dest))
            if directory and dest != "/":
                dest += "/"
            options = tuple(sorted((k, _substitute(v, scope)) for k, v in flags.items()))
            step = Step(instruction.lower(), tuple(words[:-1]) + (dest,), options)
            try:
                step.check()
            except InvalidArgumentError as exc:
                raise _error(number, line, exc.message) from None
            steps.append(step)
        elif instruction in ("ENV", "LABEL"):
            for key, value in _pairs(rest, number, line, legacy=instruction == "ENV"):
                value = _substitute(value, scope)
                if instruction == "ENV":
                    env[key] = value
                    scope[key] = value
                    steps.append(Step("env", (key, value)))
                else:
                    labels.append((key, value))
        elif instruction == "WORKDIR":
            path = _substitute(rest, scope)
            if not path:
                raise _error(number, line, "WORKDIR needs a path")
            workdir = posixpath.normpath(posixpath.join(workdir, path))
            steps.append(Step("workdir", (workdir,)))
        elif instruction == "USER":
            user = _substitute(rest, scope)
            if not user or " " in user:
                raise _error(number, line, "expected USER name[:group]")
            steps.append(Step("user", (user,)))
        elif instruction in ("CMD", "ENTRYPOINT"):
            value = _json_list(rest)
            form: list[str] | str = value if value is not None else rest
            if instruction == "CMD":
                cmd = form
            else:
                entrypoint = form
        else:
            raise _error(number, line, f"unknown instruction {word}")
    if base is None:
        raise InvalidArgumentError("Dockerfile: no FROM instruction")
    return Definition(base=base, steps=tuple(steps), start_cmd=_start(entrypoint, cmd),
                      labels=tuple(labels))


def _start(entrypoint, cmd) -> Optional[str]:
    """ENTRYPOINT and CMD as the one shell command a sandbox starts with (Docker's rules: a
    shell-form ENTRYPOINT ignores CMD; an exec-form one takes CMD's words as arguments)."""
    def words(form) -> list[str]:
        return ["/bin/sh", "-c", form] if isinstance(form, str) else list(form)

    if entrypoint is None and cmd is None:
        return None
    if entrypoint is None:
        return cmd if isinstance(cmd, str) else shlex.join(cmd)
    if isinstance(entrypoint, str):
        return entrypoint
    return shlex.join(words(entrypoint) + (words(cmd) if cmd is not None else []))
