"""A template definition as it travels: what to start from, the steps on top, how its
sandboxes start. Plain data, no I/O.

The SDK's ``Template`` builder and the Dockerfile front end (``dockerfile.py``) both produce
it; the server's builder runs it, one cached layer per step. Keeping one definition means a
Dockerfile and a builder chain that say the same thing build the same template, and
``to_dockerfile`` can hand any definition to other tools.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from hutch.errors import InvalidArgumentError

#: What a step may be. ``copy`` and ``add`` take sources from the client's build context
#: (``add`` also unpacks local tar archives, as Docker's does).
KINDS = ("apt", "pip", "npm", "run", "copy", "add", "env", "workdir", "user")


@dataclass(frozen=True)
class Step:
    kind: str
    args: tuple[str, ...]
    # copy/add: "chown" ("user[:group]") and "chmod" (octal); run: nothing yet.
    options: tuple[tuple[str, str], ...] = ()
    # run: build-time variables (a Dockerfile's ARGs), set for this command only.
    env: tuple[tuple[str, str], ...] = ()

    def option(self, name: str) -> Optional[str]:
        return dict(self.options).get(name)

    def check(self) -> None:
        """Raise InvalidArgumentError naming what is wrong with this step."""
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"unknown step kind {self.kind!r} (one of {', '.join(KINDS)})")
        if any(not isinstance(a, str) for a in self.args):
            raise InvalidArgumentError(f"{self.kind}: arguments must be strings")
        if any("\0" in a for a in self.args):
            raise InvalidArgumentError(f"{self.kind}: NUL byte in an argument")
        need = {"apt": 1, "pip": 1, "npm": 1, "run": 1, "copy": 2, "add": 2, "env": 2,
                "workdir": 1, "user": 1}[self.kind]
        exact = self.kind in ("run", "env", "workdir", "user")
        if len(self.args) < need or (exact and len(self.args) != need):
            raise InvalidArgumentError(f"{self.kind}: expected {'exactly' if exact else 'at least'} "
                                  f"{need} argument(s), got {len(self.args)}")
        if self.kind in ("copy", "add") and len(self.args) > 2 and not self.args[-1].endswith("/"):
            raise InvalidArgumentError(f"{self.kind}: with several sources the destination must be "
                                  f"a directory ending in '/', got {self.args[-1]!r}")
        if self.kind == "env" and (not self.args[0] or "=" in self.args[0]
                                   or any(c.isspace() for c in self.args[0])):
            raise InvalidArgumentError(f"env: bad variable name {self.args[0]!r}")
        for name, value in self.options:
            if name == "chmod" and not (value.isdigit() and set(value) <= set("01234567")):
                raise InvalidArgumentError(f"{self.kind}: --chmod wants octal digits, got {value!r}")
            if name not in ("chown", "chmod"):
                raise InvalidArgumentError(f"{self.kind}: unknown option {name!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "args": list(self.args)}
        if self.options:
            out["options"] = dict(self.options)
        if self.env:
            out["env"] = dict(self.env)
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Step":
        if not isinstance(data, dict) or not isinstance(data.get("args"), list):
            raise InvalidArgumentError(f"a step is an object with kind and args, got {data!r}")
        options, env = data.get("options") or {}, data.get("env") or {}
        if not isinstance(options, dict) or not isinstance(env, dict):
            raise InvalidArgumentError("step options and env are objects of strings")
        step = cls(str(data.get("kind")), tuple(data["args"]),
                   tuple(sorted((str(k), str(v)) for k, v in options.items())),
                   tuple((str(k), str(v)) for k, v in env.items()))
        step.check()
        return step


@dataclass(frozen=True)
class Definition:
    """``base`` names a hutch template (``base``, ``code-interpreter``, one of yours) or an
    OCI image (``python:3.12-slim``, ``ghcr.io/org/img:tag``); the server decides which, a
    template winning over an image of the same bare name."""

    base: str
    steps: tuple[Step, ...] = ()
    start_cmd: Optional[str] = None
    ready_cmd: Optional[str] = None
    labels: tuple[tuple[str, str], ...] = ()
    cpu: Optional[float] = None
    memory_mb: Optional[int] = None
    extra: dict = field(default_factory=dict, compare=False)   # reserved, never sent

    def check(self) -> None:
        if not isinstance(self.base, str) or not self.base.strip() or "\0" in self.base:
            raise InvalidArgumentError("a template needs a base: a template name or an image")
        for step in self.steps:
            step.check()
        if self.ready_cmd is not None and self.start_cmd is None:
            raise InvalidArgumentError("a ready command needs a start command")
        if self.cpu is not None and not self.cpu > 0:
            raise InvalidArgumentError(f"cpu must be positive, got {self.cpu!r}")
        if self.memory_mb is not None and not (isinstance(self.memory_mb, int)
                                               and self.memory_mb > 0):
            raise InvalidArgumentError(f"memory_mb must be a positive integer, got {self.memory_mb!r}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base": self.base, "steps": [s.to_json() for s in self.steps]}
        for key in ("start_cmd", "ready_cmd", "cpu", "memory_mb"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Definition":
        if not isinstance(data, dict):
            raise InvalidArgumentError("a template definition is a JSON object")
        unknown = set(data) - {"base", "steps", "start_cmd", "ready_cmd", "labels", "cpu",
                               "memory_mb"}
        if unknown:
            raise InvalidArgumentError(f"unknown template field(s): {', '.join(sorted(unknown))}")
        steps = data.get("steps") or []
        if not isinstance(steps, list):
            raise InvalidArgumentError("steps is a list")
        labels = data.get("labels") or {}
        if not isinstance(labels, dict):
            raise InvalidArgumentError("labels is an object of strings")
        definition = cls(str(data.get("base") or ""), tuple(Step.from_json(s) for s in steps),
                         data.get("start_cmd"), data.get("ready_cmd"),
                         tuple((str(k), str(v)) for k, v in labels.items()),
                         data.get("cpu"), data.get("memory_mb"))
        definition.check()
        return definition

    def to_dockerfile(self) -> str:
        """The same template as a Dockerfile (for Docker, or back into hutch): package steps
        become the RUN lines that do the same."""
        q = shlex.quote
        lines = [f"FROM {self.base}"]
        declared: dict[str, str] = {}
        for key, value in self.labels:
            lines.append(f"LABEL {json.dumps(key)}={json.dumps(value)}")
        for step in self.steps:
            a = step.args
            if step.kind == "apt":
                lines.append("RUN apt-get update && apt-get install -y --no-install-recommends "
                             + " ".join(map(q, a)) + " && rm -rf /var/lib/apt/lists/*")
            elif step.kind == "pip":
                lines.append("RUN pip install --no-cache-dir " + " ".join(map(q, a)))
            elif step.kind == "npm":
                lines.append("RUN npm install -g " + " ".join(map(q, a)))
            elif step.kind == "run":
                for key, value in step.env:     # build-time variables are ARGs there
                    if declared.get(key) != value:
                        lines.append(f"ARG {key}={json.dumps(value)}")
                        declared[key] = value
                lines.append(f"RUN {a[0]}".replace("\n", " \\\n    "))
            elif step.kind in ("copy", "add"):
                flags = "".join(f"--{k}={v} " for k, v in step.options)
                lines.append(f"{step.kind.upper()} {flags}{json.dumps(list(a))}")
            elif step.kind == "env":
                lines.append(f"ENV {a[0]}={json.dumps(a[1])}")
            elif step.kind == "workdir":
                lines.append(f"WORKDIR {a[0]}")
            elif step.kind == "user":
                lines.append(f"USER {a[0]}")
        if self.start_cmd is not None:
            lines.append(f"CMD {json.dumps(['/bin/sh', '-c', self.start_cmd])}")
        return "\n".join(lines) + "\n"
