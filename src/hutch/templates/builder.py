"""Building one template's root filesystem into a scratch directory.

The store decides where and when (locking, atomic placement); this module does the work:
run mmdebstrap with the recipe, stream its output into a log and the progress parser, check
the result's shape, and shift its owners into the sandboxes' id range. Nothing here knows
about digests or the final location.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from hutch.errors import TemplateError

from . import configure, mmdebstrap, ownership
from .progress import Progress
from .recipe import Recipe

LOG_TAIL_LINES = 40
# Directories runc mounts over; a template where they are symlinks or files is rejected so a
# crafted layer can never redirect those mounts (runc CVE-2023-28642 class).
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "run")


@dataclass
class BuildResult:
    seconds: float
    entries: int
    bytes: int
    packages: dict[str, str] = field(default_factory=dict)


def _program(argv: list[str]) -> str:
    if "mmdebstrap" in argv:
        return "mmdebstrap"
    return "layer build" if any("layer_exec" in a for a in argv) else os.path.basename(argv[0])


class Reporter:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    def __call__(self, phase: str, fraction: float, detail: str = "") -> None:
        if self.progress is not None:
            self.progress.update(phase, fraction, detail)


async def bootstrap(recipe: Recipe, workdir: Path, *, cache: Path, ca_files: dict[str, bytes],
                    uid_base: int, progress: Progress | None = None) -> BuildResult:
    """Build ``recipe`` into ``workdir/rootfs`` (``workdir`` exists and is empty), leaving
    ``workdir/build.log``. Raises TemplateError with the log's tail on failure; the caller
    removes ``workdir``."""
    started = time.monotonic()
    report = Reporter(progress)
    report("preparing", 0.0)
    ca_dir = None
    if ca_files:
        ca_dir = workdir / "ca"
        ca_dir.mkdir()
        for name, data in ca_files.items():
            (ca_dir / name).write_bytes(data)
    script = workdir / "configure.sh"
    script.write_text(configure.script(recipe, ca_source=ca_dir))
    rootfs = workdir / "rootfs"
    used = workdir / "debs.txt"
    argv = mmdebstrap.command(recipe, rootfs, cache=cache, configure_script=script,
                              used_debs=used)
    await run(argv, workdir / "build.log", report)
    _prune_cache(cache, used)

    report("checking the root filesystem", mmdebstrap.BUILDER_START)
    _check_shape(rootfs)
    report("shifting ownership", mmdebstrap.BUILDER_START + 0.01)
    try:
        tally = await asyncio.to_thread(ownership.shift, rootfs, uid_base)
    except (OSError, ValueError) as e:
        raise TemplateError(f"template {recipe.name}: shifting ownership failed: {e}") from e
    packages = installed_packages(rootfs / "var/lib/dpkg/status")
    report("recording metadata", 0.99)
    return BuildResult(time.monotonic() - started, tally.entries, tally.bytes, packages)


async def run(argv: list[str], log_path: Path, report: Reporter,
              parser: mmdebstrap.OutputParser | None = None) -> None:
    """Run a build command, logging its output and turning it into progress; TemplateError
    with the log's tail if it fails. Cancelling kills its whole process group."""
    parser = parser or mmdebstrap.OutputParser()
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    # C locale: the parser reads apt's and dpkg's English messages.
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
           "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
            limit=1 << 20)
    except OSError as e:
        raise TemplateError(f"cannot start {argv[0]}: {e}") from e
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            log.write("$ " + " ".join(argv) + "\n")
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                log.write(line)
                tail.append(line.rstrip("\n"))
                update = parser.feed(line)
                if update is not None:
                    report(update.phase, update.fraction, update.detail)
        code = await proc.wait()
    except BaseException:
        # Cancelled or failed while mmdebstrap runs: stop its whole session (apt, dpkg and
        # maintainer scripts included) before the caller removes the half-built tree.
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        raise
    if code != 0:
        errors = "; ".join(parser.errors[-3:])
        summary = f"{_program(argv)} exited with status {code}" + (f" ({errors})" if errors else "")
        raise TemplateError(summary + "\n--- last lines of the build log ---\n" + "\n".join(tail))


def _prune_cache(cache: Path, used: Path) -> None:
    """Drop superseded package versions so the cache does not grow with every update."""
    try:
        names = used.read_text().split()
        used.unlink()
    except FileNotFoundError:
        return
    for name in mmdebstrap.stale_debs([p.name for p in cache.glob("*.deb")], names):
        (cache / name).unlink(missing_ok=True)


def _check_shape(rootfs: Path) -> None:
    for name in MOUNT_POINTS:
        st = os.lstat(rootfs / name)
        if not stat.S_ISDIR(st.st_mode):
            raise TemplateError(f"/{name} in the built root filesystem is not a directory")
    # The in-sandbox agent runs on the template's own python3, so every template needs it.
    for name in ("bin/sh", "usr/bin/python3", "etc/passwd"):
        if not os.path.lexists(rootfs / name):
            raise TemplateError(f"/{name} is missing from the built root filesystem")


def installed_packages(status_file: Path) -> dict[str, str]:
    """Package -> version of what dpkg lists as installed (a readable record in meta.json)."""
    out: dict[str, str] = {}
    try:
        text = status_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out
