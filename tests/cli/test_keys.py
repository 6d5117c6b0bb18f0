"""`hutch keys create | ls | revoke` against a real server, run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TIMEOUT = 180


@pytest.fixture
def hutch(hutch_server):
    """Run `hutch ...` with the admin key, or with ``key=`` another one."""
    def run(*args: str, key: str | None = None, check: bool = True):
        env = {**os.environ, "HUTCH_URL": hutch_server.url,
               "HUTCH_API_KEY": key or hutch_server.api_key}
        result = subprocess.run([sys.executable, "-m", "hutch", *args], env=env,
                                capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"hutch {' '.join(args)} exited {result.returncode}: "
                                 f"{result.stderr.decode(errors='replace')}")
        return result

    return run


def _listed(hutch, *flags: str) -> dict[str, dict]:
    return {k["id"]: k for k in json.loads(hutch("keys", "ls", "--json", *flags).stdout)}


def test_create_ls_use_revoke(hutch):
    made = hutch("keys", "create", "--name", "cli tenant")
    key = made.stdout.decode().strip()
    assert made.stdout.decode() == key + "\n" and key.startswith("e2b_")   # the key alone
    assert b"cannot be shown again" in made.stderr
    key_id = made.stderr.decode().split()[1]

    entry = _listed(hutch)[key_id]
    assert entry["name"] == "cli tenant" and entry["revokedAt"] is None
    assert entry["admin"] is False
    table = hutch("keys", "ls").stdout.decode()
    assert table.startswith("ID") and key_id in table and "cli tenant" in table
    assert key not in table

    try:
        # The new key is a tenant of its own: its sandbox is not the admin's.
        sid = hutch("create", "--timeout", "120", key=key).stdout.decode().strip()
        assert sid in hutch("ls", "-q", key=key).stdout.decode().split()
        assert sid not in hutch("ls", "-q").stdout.decode().split()
        foreign = hutch("sandbox", "info", sid, check=False)
        assert foreign.returncode == 1
        assert foreign.stderr.startswith(b"error: SandboxNotFoundError")

        # Only the admin key manages keys.
        for args in (("keys", "ls"), ("keys", "create"), ("keys", "revoke", key_id)):
            denied = hutch(*args, key=key, check=False)
            assert denied.returncode == 1, args
            assert denied.stderr == (b"error: PermissionDeniedError: managing API keys "
                                     b"needs the admin key\n")
    finally:
        revoked = hutch("keys", "revoke", key_id)
    assert revoked.stderr == f"key {key_id} revoked\n".encode()

    refused = hutch("ls", key=key, check=False)
    assert refused.returncode == 1 and refused.stderr.startswith(b"error: AuthenticationError")
    assert key_id not in _listed(hutch)
    assert _listed(hutch, "--all")[key_id]["revokedAt"] is not None


def test_create_json_and_errors(hutch):
    made = json.loads(hutch("keys", "create", "--json").stdout)
    assert set(made) == {"id", "name", "key", "createdAt", "revokedAt", "admin", "quotas"}
    assert made["name"] == ""
    hutch("keys", "revoke", made["id"])

    unknown = hutch("keys", "revoke", "knosuchkey00", check=False)
    assert unknown.returncode == 1 and unknown.stderr.startswith(b"error: NotFoundError")
    admin = hutch("keys", "revoke", "admin", check=False)
    assert admin.returncode == 1 and admin.stderr.startswith(b"error: ConflictError")
    bad = hutch("keys", "ls", key="e2b_" + "0" * 40, check=False)
    assert bad.returncode == 1 and bad.stderr == b"error: AuthenticationError: invalid API key\n"
