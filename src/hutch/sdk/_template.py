"""``Template``: describe an environment in code, the way Modal's ``Image`` and E2B's
``Template`` do, or take it from a Dockerfile.

    tpl = (Template.from_template("base")
           .apt_install("ffmpeg")
           .pip_install("yt-dlp", "openai")
           .copy("tools/", "/opt/tools/", chown="user")
           .env(TOOLS="/opt/tools")
           .start_cmd("python3 -m http.server 8000", ready_cmd="curl -sf localhost:8000"))
    print(tpl.to_dockerfile())

Every method adds one step and returns the template, so calls chain. The result is a
:class:`hutch.protocol.template.Definition`, the same value a Dockerfile parses to.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from hutch.protocol import dockerfile
from hutch.protocol.template import Definition, Step


def _names(packages: tuple[Union[str, Sequence[str]], ...]) -> tuple[str, ...]:
    """``("a", "b")`` or ``(["a", "b"],)``: both are two packages."""
    out: list[str] = []
    for p in packages:
        out.extend([p] if isinstance(p, str) else p)
    return tuple(out)


class Template:
    def __init__(self, base: str = "base") -> None:
        self._definition = Definition(base=base)
        self._definition.check()

    # -- bases --------------------------------------------------------------------------

    @classmethod
    def from_template(cls, name: str) -> "Template":
        """On top of a hutch template (``base``, ``code-interpreter``, one of yours)."""
        return cls(name)

    @classmethod
    def from_image(cls, image: str) -> "Template":
        """On top of an OCI image from a registry (``python:3.12-slim``, ``ghcr.io/o/i:t``)."""
        return cls(image)

    @classmethod
    def debian(cls, release: str = "bookworm") -> "Template":
        """A Debian release: bookworm is hutch's own ``base``; others are Debian's image."""
        return cls("base" if release == "bookworm" else f"debian:{release}")

    @classmethod
    def from_dockerfile(cls, path_or_text: Union[str, os.PathLike],
                        build_args: Optional[dict[str, str]] = None) -> "Template":
        """From a Dockerfile's path or its text (anything with a newline is text)."""
        text = str(path_or_text)
        if "\n" not in text:
            text = Path(text).read_text()
        tpl = cls.__new__(cls)
        tpl._definition = dockerfile.parse(text, build_args)
        return tpl

    # -- steps --------------------------------------------------------------------------

    def _add(self, step: Step) -> "Template":
        step.check()
        d = self._definition
        self._definition = Definition(d.base, d.steps + (step,), d.start_cmd, d.ready_cmd,
                                      d.labels, d.cpu, d.memory_mb)
        return self

    def apt_install(self, *packages: Union[str, Sequence[str]]) -> "Template":
        return self._add(Step("apt", _names(packages)))

    def pip_install(self, *packages: Union[str, Sequence[str]]) -> "Template":
        return self._add(Step("pip", _names(packages)))

    def npm_install(self, *packages: Union[str, Sequence[str]]) -> "Template":
        """Installed globally (``npm install -g``), so every user's PATH has them."""
        return self._add(Step("npm", _names(packages)))

    def run(self, command: str, env: Optional[dict[str, str]] = None) -> "Template":
        """A shell command, run as the template's current user in its current directory;
        ``env`` holds for this command only."""
        return self._add(Step("run", (command,), env=tuple((env or {}).items())))

    def copy(self, src: Union[str, Sequence[str]], dest: str, *, chown: Optional[str] = None,
             mode: Optional[int] = None) -> "Template":
        """Files or directories from this machine (globs allowed; several sources need a
        destination ending in ``/``). Relative sources are relative to the build context,
        the current directory unless the build says otherwise."""
        sources = (src,) if isinstance(src, str) else tuple(src)
        options = []
        if chown is not None:
            options.append(("chown", chown))
        if mode is not None:
            options.append(("chmod", format(mode, "o")))
        return self._add(Step("copy", sources + (dest,), tuple(sorted(options))))

    def env(self, variables: Optional[dict[str, str]] = None, **more: str) -> "Template":
        for key, value in {**(variables or {}), **more}.items():
            self._add(Step("env", (key, str(value))))
        return self

    def workdir(self, path: str) -> "Template":
        return self._add(Step("workdir", (path,)))

    def user(self, name: str) -> "Template":
        return self._add(Step("user", (name,)))

    def start_cmd(self, command: str, ready_cmd: Optional[str] = None) -> "Template":
        """What every new sandbox of this template starts; with ``ready_cmd``, a create
        returns only once that command succeeds."""
        d = self._definition
        self._definition = Definition(d.base, d.steps, command, ready_cmd, d.labels, d.cpu,
                                      d.memory_mb)
        self._definition.check()
        return self

    # -- building ---------------------------------------------------------------------------

    def _sized(self, cpu: Optional[float], memory_mb: Optional[int]) -> Definition:
        d = self._definition
        sized = Definition(d.base, d.steps, d.start_cmd, d.ready_cmd, d.labels,
                           cpu if cpu is not None else d.cpu,
                           memory_mb if memory_mb is not None else d.memory_mb)
        sized.check()
        return sized

    def build(self, name: str, *, cpu: Optional[float] = None, memory_mb: Optional[int] = None,
              context_dir: Union[str, os.PathLike, None] = None,
              on_log: Optional[Callable[[str], Any]] = None,
              on_step: Optional[Callable[[dict], Any]] = None, api_key: Optional[str] = None,
              url: Optional[str] = None, request_timeout: Optional[float] = None) -> dict:
        """Build this template on the server as ``name`` (yours: other keys cannot see it)
        and return its description; ``Sandbox.create(template=name)`` starts from it.
        ``cpu`` and ``memory_mb`` become its sandboxes' defaults. Each step's output goes to
        ``on_log`` line by line, each step's start (and whether it came from the cache) to
        ``on_step``. Files COPY names are read from ``context_dir`` (default: the current
        directory). A failing step raises ``TemplateError`` with its output and exit code."""
        from hutch.sdk._sync.templates import build_template
        return build_template(self._sized(cpu, memory_mb), name,
                              context_dir=Path(context_dir) if context_dir else None,
                              on_log=on_log, on_step=on_step, api_key=api_key, url=url,
                              request_timeout=request_timeout)

    async def build_async(self, name: str, *, cpu: Optional[float] = None,
                          memory_mb: Optional[int] = None,
                          context_dir: Union[str, os.PathLike, None] = None,
                          on_log: Optional[Callable[[str], Any]] = None,
                          on_step: Optional[Callable[[dict], Any]] = None,
                          api_key: Optional[str] = None, url: Optional[str] = None,
                          request_timeout: Optional[float] = None) -> dict:
        """``build`` for asyncio code (callbacks may be coroutines)."""
        from hutch.sdk._async.templates import build_template
        return await build_template(self._sized(cpu, memory_mb), name,
                                    context_dir=Path(context_dir) if context_dir else None,
                                    on_log=on_log, on_step=on_step, api_key=api_key, url=url,
                                    request_timeout=request_timeout)

    # -- out ----------------------------------------------------------------------------

    @property
    def definition(self) -> Definition:
        return self._definition

    def to_dockerfile(self) -> str:
        return self._definition.to_dockerfile()

    def __repr__(self) -> str:
        return f"Template({self._definition.base!r}, {len(self._definition.steps)} steps)"
