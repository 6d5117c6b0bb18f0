"""The store's side of tenancy: key records, owners, and stores made before both existed."""

from __future__ import annotations

import sqlite3
import time

from hutch.server.keys import ensure_admin_key, new_key, new_key_id
from hutch.server.store import ADMIN_KEY_ID, SandboxRecord, Store, hash_key

# The tables as the first releases made them: no owners, no admin flag.
_OLD_SCHEMA = """
CREATE TABLE sandboxes (
    id TEXT PRIMARY KEY, template TEXT NOT NULL, alias TEXT, digest TEXT, state TEXT NOT NULL,
    reason TEXT, metadata TEXT NOT NULL DEFAULT '{}', env_vars TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL, started_at REAL, end_at REAL NOT NULL, ended_at REAL,
    cpu REAL NOT NULL, memory_mb INTEGER NOT NULL, disk_mb INTEGER NOT NULL,
    pids INTEGER NOT NULL, network TEXT NOT NULL, access_token TEXT, run_dir TEXT,
    address TEXT, seq INTEGER NOT NULL
);
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL, revoked_at REAL
);
"""


def _rec(sid: str, owner: str | None, **kw) -> SandboxRecord:
    now = time.time()
    return SandboxRecord(id=sid, template="base", state=kw.pop("state", "running"),
                         created_at=now, end_at=now + 300, cpu=1.0, memory_mb=512,
                         disk_mb=1024, pids=512, network="internet", owner=owner, **kw)


def test_a_store_from_before_tenants_is_migrated(tmp_path):
    path = tmp_path / "hutch.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_SCHEMA)
    now = time.time()
    for seq, (sid, state) in enumerate([("a" * 20, "running"), ("p" * 20, "pooled")], 1):
        db.execute("INSERT INTO sandboxes (id, template, state, created_at, end_at, cpu, "
                   "memory_mb, disk_mb, pids, network, seq) VALUES (?,?,?,?,?,1,512,1024,512,"
                   "'internet',?)", (sid, "base", state, now, now + 300, seq))
    admin_key = new_key()
    db.execute("INSERT INTO api_keys (id, name, hash, created_at) VALUES (?,?,?,?)",
               (ADMIN_KEY_ID, "admin", hash_key(admin_key), now))
    db.commit()
    db.close()

    store = Store(path)
    try:
        # The only key there was made everything; pooled sandboxes were nobody's yet.
        assert store.get("a" * 20).owner == ADMIN_KEY_ID
        assert store.get("p" * 20).owner is None
        admin = store.key_for(admin_key)
        assert admin is not None and admin.id == ADMIN_KEY_ID and admin.admin
        assert store.has_keys()
    finally:
        store.close()
    Store(path).close()   # opening a migrated store again changes nothing


def test_keys_owners_and_revocation(tmp_path):
    store = Store(tmp_path / "hutch.db")
    try:
        assert ensure_admin_key(store, tmp_path / "admin.key")
        admin_key = (tmp_path / "admin.key").read_text().strip()
        assert store.key_for(admin_key).admin is True

        plaintext, key_id = new_key(), new_key_id()
        assert key_id.startswith("k") and len(key_id) == 12 and key_id.isalnum()
        made = store.add_key(key_id, "alice", plaintext)
        assert made.admin is False and made.revoked_at is None
        assert store.key_for(plaintext) == made == store.get_key(key_id)
        assert [k.id for k in store.keys()] == [ADMIN_KEY_ID, key_id]

        store.insert(_rec("x" * 20, key_id, metadata={"t": "1"}))
        store.insert(_rec("y" * 20, ADMIN_KEY_ID, metadata={"t": "1"}))
        mine, _ = store.page(states=["running"], owner=key_id)
        theirs, _ = store.page(states=["running"], owner=ADMIN_KEY_ID, metadata={"t": "1"})
        assert [r.id for r in mine] == ["x" * 20] and [r.id for r in theirs] == ["y" * 20]
        assert store.get("x" * 20).owner == key_id

        assert store.revoke_key(key_id) and not store.revoke_key(key_id)
        assert store.key_for(plaintext) is None
        assert store.get_key(key_id).revoked_at is not None
        assert store.key_for(admin_key) is not None
    finally:
        store.close()
