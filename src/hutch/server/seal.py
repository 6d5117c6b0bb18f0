"""Sealing: the secrets the store must keep (a sandbox's env var values), never in the clear.

A sandbox's env vars must survive a server restart (the agent is re-initialised with them), so
they are stored; but the store is the file people copy, back up and open with ``sqlite3`` to
look at the audit trail, and an env var is where API keys and passwords go. They are sealed
with a key kept in a file of its own next to the store (``<store>.key``, mode 0600, made on
first use): the SQLite file alone reveals nothing of them.

The construction uses the standard library only (no third-party cipher is a dependency):
encrypt-then-MAC with HMAC-SHA256 as the PRF of a counter-mode keystream, a fresh 16-byte
nonce per value, and an HMAC-SHA256 tag over nonce and ciphertext, with separate derived keys
for the two jobs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

log = logging.getLogger("hutch.server")

_NONCE = 16
_TAG = 32


class Sealer:
    PREFIX = "sealed:v1:"

    def __init__(self, key: bytes) -> None:
        self._enc = hmac.new(key, b"hutch seal: encryption", hashlib.sha256).digest()
        self._mac = hmac.new(key, b"hutch seal: authentication", hashlib.sha256).digest()

    @classmethod
    def for_store(cls, store_path: Path) -> "Sealer":
        """The sealer of the store at ``store_path``, its key made on first use."""
        key_path = store_path.with_name(store_path.name + ".key")
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
        if len(key) < 32:
            raise ValueError(f"the sealing key {key_path} is too short")
        return cls(key)

    def _stream(self, nonce: bytes, size: int) -> bytes:
        blocks = (size + 31) // 32
        return b"".join(hmac.new(self._enc, nonce + i.to_bytes(8, "big"), hashlib.sha256)
                        .digest() for i in range(blocks))[:size]

    def seal(self, plain: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE)
        cipher = bytes(a ^ b for a, b in zip(plain, self._stream(nonce, len(plain))))
        tag = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()
        return self.PREFIX + base64.b64encode(nonce + cipher + tag).decode()

    def open(self, sealed: str) -> bytes:
        raw = base64.b64decode(sealed[len(self.PREFIX):])
        nonce, cipher, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
        want = hmac.new(self._mac, nonce + cipher, hashlib.sha256).digest()
        if len(raw) < _NONCE + _TAG or not hmac.compare_digest(tag, want):
            raise ValueError("sealed value fails its check (another key, or damaged)")
        return bytes(a ^ b for a, b in zip(cipher, self._stream(nonce, len(cipher))))

    def seal_json(self, value: Any) -> str:
        return self.seal(json.dumps(value).encode())

    def open_json(self, text: str) -> Any:
        """The value of a sealed column; a value from before sealing is read as it is. One
        that cannot be opened (the key file replaced) reads as empty, with a warning: the
        sandbox then runs without its env vars rather than not at all."""
        if not text.startswith(self.PREFIX):
            return json.loads(text)
        try:
            return json.loads(self.open(text))
        except ValueError as exc:
            log.warning("cannot open a sealed value of the store: %s", exc)
            return {}
