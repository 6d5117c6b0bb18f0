"""The SQLite store: records, state changes, filtered cursor pagination, API keys."""

from __future__ import annotations

import time

import pytest

from hutch.errors import InvalidArgumentError
from hutch.server.keys import ensure_admin_key, new_key
from hutch.server.store import SandboxRecord, Store, hash_key


def _rec(i: int, **kw) -> SandboxRecord:
    now = time.time()
    base = dict(id=f"sbx{i:017d}", template="base", state="running", created_at=now + i,
                end_at=now + 300, cpu=1.0, memory_mb=1024, disk_mb=2048, pids=1024,
                network="internet")
    base.update(kw)
    return SandboxRecord(**base)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "hutch.db")
    yield s
    s.close()


def test_insert_update_get_and_reopen(tmp_path):
    path = tmp_path / "hutch.db"
    s = Store(path)
    rec = _rec(1, state="creating", metadata={"a": "1"}, env_vars={"SECRET": "v"},
               access_token="tok")
    s.insert(rec)
    rec2 = s.update(rec, state="running", run_dir="/run/x", started_at=123.0)
    assert rec2.state == "running" and rec2.run_dir == "/run/x"
    s.close()
    s = Store(path)
    got = s.get(rec.id)
    assert got == rec2
    assert got.env_vars == {"SECRET": "v"} and got.access_token == "tok"
    assert "SECRET" not in repr(got) and "tok" not in repr(got)   # values never in logs
    assert s.get("missing") is None
    assert [r.id for r in s.in_states(["running"])] == [rec.id]
    assert (path.stat().st_mode & 0o777) == 0o600
    s.insert(_rec(2))   # sequence continues after a reopen
    assert [r.id for r in s.in_states(["running"])] == [rec.id, _rec(2).id]
    s.close()


def test_update_rejects_unknown_columns_and_states(store):
    rec = _rec(1)
    store.insert(rec)
    with pytest.raises(ValueError):
        store.update(rec, state="sleeping")
    with pytest.raises(ValueError):
        store.update(rec, nonsense=1)


def test_page_filters_and_cursor(store):
    for i in range(7):
        store.insert(_rec(i, metadata={"team": "a" if i % 2 else "b", "i": str(i)}))
    store.insert(_rec(10, state="killed", metadata={"team": "a"}))
    store.insert(_rec(11, template="code-interpreter", alias="code-interpreter-v1"))

    seen, token, pages = [], None, 0
    while True:
        page, token = store.page(states=["running"], limit=3, next_token=token)
        seen += [r.id for r in page]
        pages += 1
        if token is None:
            break
    assert seen == [_rec(i).id for i in (0, 1, 2, 3, 4, 5, 6, 11)] and pages == 3

    team_a, token = store.page(states=["running"], metadata={"team": "a"})
    assert [r.id for r in team_a] == [_rec(i).id for i in (1, 3, 5)] and token is None
    both, _ = store.page(states=["running"], metadata={"team": "a", "i": "3"})
    assert [r.id for r in both] == [_rec(3).id]
    killed, _ = store.page(states=["killed"])
    assert [r.id for r in killed] == [_rec(10).id]
    by_alias, _ = store.page(states=["running"], template="code-interpreter-v1")
    assert [r.id for r in by_alias] == [_rec(11).id]
    desc, token = store.page(states=["running"], limit=2, descending=True)
    assert [r.id for r in desc] == [_rec(11).id, _rec(6).id]
    desc2, _ = store.page(states=["running"], limit=2, descending=True, next_token=token)
    assert [r.id for r in desc2] == [_rec(5).id, _rec(4).id]
    after, _ = store.page(states=["running"], started_after=_rec(5).created_at)
    assert [r.id for r in after] == [_rec(6).id, _rec(11).id]
    with pytest.raises(InvalidArgumentError):
        store.page(states=["running"], next_token="!!garbage")


def test_api_keys_are_stored_hashed(tmp_path, store):
    key_path = tmp_path / "admin.key"
    assert ensure_admin_key(store, key_path) is True
    key = key_path.read_text().strip()
    assert key.startswith("e2b_") and len(key) == 44 and int(key[4:], 16) >= 0
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert store.key_valid(key) and not store.key_valid(new_key())
    raw = (tmp_path / "hutch.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("hutch.db-*"))
    assert key.encode() not in raw and hash_key(key).encode() in raw
    assert ensure_admin_key(store, key_path) is False     # never replaced on later starts
    assert key_path.read_text().strip() == key
    assert store.revoke_key("admin") and not store.key_valid(key)
