"""API keys: the admin key made on first start, and the shape every key has.

Keys look like ``e2b_`` + 40 hex digits because older E2B SDKs refuse any other shape before
sending a request. Only the SHA-256 of a key is stored; the plaintext of the admin key is written
once to ``<data_dir>/admin.key`` (mode 0600) for the operator to hand out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
from pathlib import Path

from hutch.server.store import ADMIN_KEY_ID, Store


def new_key() -> str:
    return "e2b_" + secrets.token_hex(20)


_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_key_id() -> str:
    """The public id of a key (what ``GET /keys`` shows and ``DELETE /keys/{id}`` takes):
    short, and nothing about the key itself can be learnt from it."""
    return "k" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(11))


def new_sandbox_id() -> str:
    """20 random lowercase letters and digits: E2B's shape, and hyphen-free so that
    ``<port>-<id>.<domain>`` host names parse."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(20))


def new_token() -> str:
    """An envd access token for one sandbox."""
    return secrets.token_urlsafe(24)


def ensure_admin_key(store: Store, path: Path) -> bool:
    """Create the admin key if the store has none; return True if one was made now."""
    if store.has_keys():
        return False
    key = new_key()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # Stored after the file is in place: a crash in between leaves no key the operator
    # cannot see, and the next start simply makes a new one.
    store.add_key(ADMIN_KEY_ID, "admin", key, admin=True)
    return True


def traffic_token(access_token: str | None) -> str | None:
    """The sandbox's second credential, for calls that E2B's code-interpreter SDK sends without
    the access token (context management on port 49999): ``E2B-Traffic-Access-Token``.
    Derived from the access token, so nothing more is stored, and useless for anything else."""
    if access_token is None:
        return None
    return hmac.new(access_token.encode(), b"hutch traffic token", hashlib.sha256).hexdigest()
