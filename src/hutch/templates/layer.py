"""Building a template as one more read-only layer on top of another template.

The parent's layers become the lower dirs of an overlay, the new layer its upper dir, and the
recipe's packages and commands run inside as the sandbox's root would (see ``layer_exec``):
apt in a user namespace, so what lands in the layer is owned by the shifted ids already and
nothing needs a chown walk. The layer holds only what changed, so templates built this way
share their parent's files on disk and in the page cache.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sys
import time
from pathlib import Path

from hutch.errors import TemplateError

from . import mmdebstrap
from .builder import MOUNT_POINTS, BuildResult, Reporter, installed_packages, run
from .progress import Progress
from .recipe import Recipe

# Where the build's own name resolution comes from (the template's resolv.conf stays empty).
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def script(recipe: Recipe) -> str:
    """The shell run as root inside the overlay. It echoes mmdebstrap-style ``I:`` lines so
    the same parser reports its phases; apt's lists and caches are dropped at the end, taking
    care to delete only files the layer itself created (deleting a parent's file would leave a
    whiteout in the layer for nothing)."""
    q = shlex.quote
    lines = []
    if recipe.packages:
        lines += [
            'echo "I: running apt-get update..."',
            "apt-get update",
            'echo "I: installing remaining packages inside the chroot..."',
            "apt-get install --yes --no-install-recommends " + " ".join(map(q, recipe.packages)),
        ]
    for command in recipe.run:
        lines += ['echo "I: running --customize-hook"', f"sh -euc {q(command)}"]
    lines += [
        'echo "I: cleaning package lists and apt cache..."',
        "apt-get clean",
        "rm -f /var/lib/apt/lists/*_* /var/cache/apt/*.bin",
        # find does not follow a start point that is a symlink, unlike a shell glob.
        "find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} +",
        # pip's download cache goes; caches tools keep for later runs (matplotlib's font
        # list) stay, so sandboxes do not each rebuild them.
        "rm -rf /root/.cache/pip",
    ]
    return "\n".join(lines) + "\n"


async def build(recipe: Recipe, lower: tuple[Path, ...], workdir: Path, *, uid_base: int,
                progress: Progress | None = None) -> BuildResult:
    """Build ``recipe`` as a layer over ``lower`` (topmost first) into ``workdir/rootfs``."""
    started = time.monotonic()
    report = Reporter(progress)
    report("preparing", 0.0)
    upper, work, merged = workdir / "rootfs", workdir / "work", workdir / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    # The layer's top directory is the sandbox's "/": owned by its root, like the parent's.
    top = os.stat(lower[-1])
    os.chown(upper, top.st_uid, top.st_gid)
    os.chmod(upper, stat.S_IMODE(top.st_mode))
    env = {"PATH": _PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive",
           "HOME": "/root", **dict(recipe.env)}
    spec = {
        "lower": [str(p) for p in lower], "upper": str(upper), "work": str(work),
        "merged": str(merged), "uid_base": uid_base, "script": script(recipe),
        "env": env, "resolv_conf": str(HOST_RESOLV_CONF),
    }
    spec_path = workdir / "layer.json"
    spec_path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "hutch.templates.layer_exec", str(spec_path)]
    parser = mmdebstrap.OutputParser(mmdebstrap.LAYER_PHASES)
    try:
        await run(argv, workdir / "build.log", report, parser)
    finally:
        spec_path.unlink(missing_ok=True)
    report("recording metadata", 0.99)
    for d in (work, merged):
        _remove_dir(d)
    for name in MOUNT_POINTS:      # a layer may not turn them into anything but directories
        path = upper / name
        if os.path.lexists(path) and not stat.S_ISDIR(os.lstat(path).st_mode):
            raise TemplateError(f"template {recipe.name}: /{name} is not a directory")
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            if st.st_uid < uid_base and not whiteout:
                raise TemplateError(f"layer file {name} is owned by host uid {st.st_uid}")
            entries += 1
            size += st.st_blocks * 512
    packages = installed_packages(upper / "var/lib/dpkg/status")
    return BuildResult(time.monotonic() - started, entries, size, packages)


def _remove_dir(path: Path) -> None:
    # overlayfs leaves an inaccessible work/work directory behind; root removes it anyway.
    shutil.rmtree(path, ignore_errors=True)
