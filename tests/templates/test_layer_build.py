"""A template built as a layer over base: the shape code-interpreter takes. Built into the
shared root (base is reused, not rebuilt), checked through a real overlay of both layers, and
removed afterwards."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from hutch.errors import TemplateError
from hutch.templates import BASE, Catalog, Recipe, TemplateStore, TerminalProgress
from hutch.templates.layer import script

from .conftest import BUILD_TIMEOUT, SHARED_ROOT, UID_BASE, in_template

LAYER = Recipe(
    name="hutch-test-layer", parent="base", aliases=("hutch-test-layer-v1",),
    packages=("jq",), env=BASE.env,
    run=("echo layered > /etc/hutch-layer-test", "rm /etc/hostname",
         # What pip and friends need while building: /proc, /dev/null, /dev/shm semaphores.
         "python3 -c 'import multiprocessing as m; m.Lock(); open(\"/proc/self/status\")'"
         " > /dev/null"),
)


def test_layer_script_runs_apt_then_commands_then_cleans():
    text = script(LAYER)
    assert text.index("apt-get update") < text.index("apt-get install --yes") \
        < text.index("sh -euc 'rm /etc/hostname'") < text.index("apt-get clean")
    assert "install --yes --no-install-recommends jq" in text
    assert "rm -f /var/lib/apt/lists/*_*" in text


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_a_layer_over_base(base):
    store = TemplateStore(SHARED_ROOT, uid_base=UID_BASE, catalog=Catalog([BASE, LAYER]))
    assert store.get("base") == base                      # the same base, not a rebuild
    await store.remove(LAYER.name)
    try:
        template = await store.ensure("hutch-test-layer-v1", TerminalProgress())
        assert template.name == LAYER.name
        top, bottom = template.layers
        assert bottom == base.layers[0]
        assert top == SHARED_ROOT / LAYER.name / store.digest(LAYER.name) / "rootfs"
        # The layer holds only the difference, owned in the sandbox range already.
        assert (top / "usr/bin/jq").exists() and not (top / "usr/bin/python3.11").exists()
        assert os.lstat(top).st_uid == UID_BASE
        assert os.lstat(top / "usr/bin/jq").st_uid == UID_BASE
        assert (top / "etc/hutch-layer-test").read_text() == "layered\n"
        hostname = os.lstat(top / "etc/hostname")               # a whiteout
        assert stat.S_ISCHR(hostname.st_mode) and hostname.st_rdev == 0
        assert not [p for p in (top / "var/lib/apt/lists").glob("*_*")]
        meta = store.metadata(LAYER.name)
        assert "jq" in meta["packages"] and meta["size_bytes"] < 50 * 2**20

        # Stacked the way the runtime stacks them, it is a working root filesystem.
        # (pytest's tmp_path is private to host root; the sandbox's root must traverse it.)
        merged = Path(tempfile.mkdtemp(prefix="hutch-test-layer-"))
        os.chmod(merged, 0o755)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={top}:{bottom}", str(merged)], check=True)
        try:
            r = in_template(merged, "sh", "-c",
                            "echo '{\"a\": 2}' | jq .a; cat /etc/hutch-layer-test;"
                            " test ! -e /etc/hostname && echo gone; python3 -c 'print(6*7)';"
                            " sudo -n true && echo sudo-ok", user="user")
        finally:
            subprocess.run(["umount", str(merged)], check=True)
            merged.rmdir()
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["2", "layered", "gone", "42", "sudo-ok"]
    finally:
        await store.remove(LAYER.name)
    assert not (SHARED_ROOT / LAYER.name).exists()
    assert store.get("base") == base


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT)
async def test_a_layer_may_not_replace_mount_points(base):
    evil = Recipe(name="hutch-test-evil-layer", parent="base", packages=(),
                  run=("rm -rf /tmp && ln -s / /tmp",))
    store = TemplateStore(SHARED_ROOT, uid_base=UID_BASE, catalog=Catalog([BASE, evil]))
    with pytest.raises(TemplateError, match="/tmp is not a directory"):
        await store.ensure(evil.name)
    assert not (SHARED_ROOT / evil.name).exists()
    assert not list((SHARED_ROOT / ".tmp").glob(f"{evil.name}@*"))
    assert store.get("base") == base
