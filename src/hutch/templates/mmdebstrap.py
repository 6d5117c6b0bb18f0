"""Driving mmdebstrap: its command line, and reading progress out of what it prints.

Both halves are pure: :func:`command` turns a recipe into argv, :class:`OutputParser` turns the
lines mmdebstrap (and the apt and dpkg runs under it) print with ``--verbose`` into phases and
fractions. The builder owns the process.

Progress is derived, not invented: mmdebstrap announces each phase with an ``I:`` line; inside
the two long phases apt says how many packages it will install ("N newly installed") and
prints one ``Get:`` line per download, then dpkg one ``Unpacking`` and one ``Setting up`` line
per package, so the fraction within a phase is a real count. The weights of the phases come
from timing a ``base`` build (essential and remaining installs dominate; extracting is the one
phase without a counter).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .recipe import Recipe

# (label, start, end) of the overall fraction; the builder's own work takes the rest to 1.0.
PHASES: dict[str, tuple[str, float, float]] = {
    "prepare": ("preparing", 0.00, 0.02),
    "update": ("updating package lists", 0.02, 0.06),
    "download": ("downloading essential packages", 0.06, 0.12),
    "extract": ("extracting essential packages", 0.12, 0.24),
    "essential": ("installing essential packages", 0.24, 0.48),
    "fetch": ("downloading packages", 0.48, 0.56),
    "install": ("installing packages", 0.56, 0.90),
    "configure": ("configuring", 0.90, 0.93),
    "cleanup": ("cleaning up", 0.93, 0.95),
}
BUILDER_START = 0.95  # after mmdebstrap: shifting ownership, recording metadata

# A layer build (apt and commands over a parent template) announces the same phases itself;
# there installing packages is nearly all of the time.
LAYER_PHASES: dict[str, tuple[str, float, float]] = {
    "prepare": ("preparing", 0.00, 0.02),
    "update": ("updating package lists", 0.02, 0.10),
    "fetch": ("downloading packages", 0.10, 0.25),
    "install": ("installing packages", 0.25, 0.80),
    "configure": ("configuring", 0.80, 0.93),
    "cleanup": ("cleaning up", 0.93, 0.95),
}

_ANNOUNCE = (
    ("I: running apt-get update", "update"),
    ("I: downloading packages with apt", "download"),
    ("I: extracting archives", "extract"),
    ("I: installing essential packages", "essential"),
    ("I: installing remaining packages", "fetch"),
    ("I: running --customize-hook", "configure"),
    ("I: cleaning package lists", "cleanup"),
)
_NEWLY = re.compile(r"^\d+ upgraded, (\d+) newly installed")


@dataclass(frozen=True)
class Update:
    phase: str      # human label
    fraction: float
    detail: str = ""


class OutputParser:
    """Feed it mmdebstrap's output lines; it answers an :class:`Update` when progress moved."""

    def __init__(self, phases: dict[str, tuple[str, float, float]] = PHASES) -> None:
        self.phases = phases
        self.phase = "prepare"
        self.total = 0          # packages apt announced for the current install
        self.gets = 0
        self.steps = 0          # Unpacking + Setting up lines in the current install
        self.errors: list[str] = []
        self._last: Update | None = None

    def feed(self, line: str) -> Update | None:
        line = line.rstrip("\n")
        if line.startswith("E: "):
            self.errors.append(line[3:])
        for prefix, phase in _ANNOUNCE:
            if line.startswith(prefix):
                self._enter(phase)
                return self._emit()
        m = _NEWLY.match(line)
        if m and self.phase in ("download", "fetch"):
            self.total = int(m.group(1))
        elif line.startswith("Get:") and self.phase in ("download", "fetch"):
            self.gets += 1
        elif line.startswith(("Unpacking ", "Setting up ")):
            if self.phase == "fetch":
                self._enter("install")
            if self.phase in ("essential", "install"):
                self.steps += 1
        else:
            return None
        return self._emit()

    def _enter(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.gets = self.steps = 0
            if phase in ("download", "fetch"):
                # A new apt run: the count it announces carries through to its install phase.
                self.total = 0

    def _within(self) -> tuple[float, str]:
        if self.total <= 0:
            return 0.0, ""
        if self.phase in ("download", "fetch"):
            return min(1.0, self.gets / self.total), f"{min(self.gets, self.total)}/{self.total}"
        if self.phase in ("essential", "install"):
            done = min(self.total, self.steps // 2)
            return min(1.0, self.steps / (2 * self.total)), f"{done}/{self.total}"
        return 0.0, ""

    def _emit(self) -> Update | None:
        label, start, end = self.phases[self.phase]
        within, detail = self._within()
        fraction = start + (end - start) * within
        if self._last is not None:
            fraction = max(fraction, self._last.fraction)
        update = Update(label, round(fraction, 4), detail)
        if update == self._last:
            return None
        self._last = update
        return update


def command(recipe: Recipe, target: Path, *, cache: Path, configure_script: Path,
            used_debs: Path) -> list[str]:
    """argv for a bootstrap of ``recipe`` into ``target``.

    It runs in a private mount namespace (``unshare --mount``): the /proc, /sys and /dev mounts
    mmdebstrap makes inside the target vanish with the process even if it is killed, so
    removing a failed build can never walk into the host's /dev or /sys. The mirror is
    mmdebstrap's default for the suite (deb.debian.org plus updates and security), reached
    through the host's apt proxy settings if any. The package cache is shared by hard links:
    debs go in before the download and new ones come back out before mmdebstrap's cleanup,
    and their names are listed in ``used_debs`` so older versions can be pruned afterwards.
    """
    archives = '"$1/var/cache/apt/archives"'
    q_cache = shlex.quote(str(cache))
    argv = [
        "unshare", "--mount", "--propagation", "private", "--",
        "mmdebstrap", "--verbose", "--mode=root", "--format=directory",
        f"--variant={recipe.variant}",
        # Keep the essential debs in the archive dir after extraction so they reach the cache.
        "--skip=essential/unlink",
    ]
    if recipe.packages:
        argv.append("--include=" + ",".join(recipe.packages))
    argv += [f"--dpkgopt=path-exclude={p}" for p in recipe.dpkg_exclude]
    argv += [f"--dpkgopt=path-include={p}" for p in recipe.dpkg_include]
    argv += [
        f"--setup-hook=mkdir -p {archives}; cp -l {q_cache}/*.deb {archives}/ 2>/dev/null || true",
        f"--customize-hook=cp -ln {archives}/*.deb {q_cache}/ 2>/dev/null || true;"
        f" (cd {archives} && ls) > {shlex.quote(str(used_debs))}",
        f"--customize-hook=sh -eu {shlex.quote(str(configure_script))} \"$1\"",
        recipe.suite,
        str(target),
    ]
    return argv


def stale_debs(cached: list[str], used: list[str]) -> list[str]:
    """Cached .deb files superseded by what a build just used: another version of a package
    (same name and architecture) the build installed. Packages the build did not touch stay,
    since another recipe may need them."""
    def key(filename: str) -> tuple[str, str] | None:
        parts = filename[:-4].split("_") if filename.endswith(".deb") else []
        return (parts[0], parts[2]) if len(parts) == 3 else None

    current = {key(f) for f in used if key(f) is not None}
    keep = set(used)
    return sorted(f for f in cached if f not in keep and key(f) in current)
