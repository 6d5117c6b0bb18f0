"""Fixtures for the template tests.

The real ``base`` template is built once into the shared root (HUTCH_TEST_TEMPLATES, by
default /var/lib/hutch-test/templates) and reused: other parts' tests start sandboxes from it,
and a current build is never redone. Throwaway templates these tests build use names starting
with ``hutch-test-`` in the same root (sharing its apt cache) and are removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hutch.templates import TemplateStore, TerminalProgress

SHARED_ROOT = Path(os.environ.get("HUTCH_TEST_TEMPLATES_DIR", "/var/lib/hutch-test/templates"))
UID_BASE = 100000
HELPER = Path(__file__).with_name("userns_chroot.py")
BUILD_TIMEOUT = 1200


@pytest.fixture(scope="session")
def shared_store() -> TemplateStore:
    return TemplateStore(SHARED_ROOT, uid_base=UID_BASE)


@pytest.fixture(scope="session")
async def base(shared_store):
    """The built base template (built here on first use, a stat afterwards)."""
    return await shared_store.ensure("base", TerminalProgress())


def in_template(rootfs: Path, *argv: str, user: str | None = None, timeout: float = 120):
    """Run argv chrooted into ``rootfs`` in a user namespace mapping 0 -> UID_BASE, as root or
    (through setpriv) as ``user``, the way a sandbox sees its template."""
    if user is not None:
        argv = ("setpriv", "--reuid", user, "--regid", user, "--init-groups",
                "env", f"HOME=/home/{user}", f"USER={user}", *argv)
    return subprocess.run([sys.executable, str(HELPER), str(rootfs), str(UID_BASE), *argv],
                          capture_output=True, text=True, timeout=timeout)
