"""The durable record of every sandbox and API key: SQLite in WAL mode.

The record of a sandbox is written (state ``creating``, with its absolute deadline) before any
kernel object exists, so a server that dies at any instant can tell on restart what it owned:
what runs with a record is adopted, what runs without one is an orphan.

Calls are synchronous on purpose: each is a single indexed statement on a local file taking tens
of microseconds, cheaper than a hop to a thread. ``synchronous=NORMAL`` with WAL keeps every
commit across a crash of the server process (a power cut may lose the last few, which the
reconciler then treats as orphans).

Env var *values* are kept because a sandbox must be re-initialised with them after a restart;
they are sealed (:mod:`hutch.server.seal`) with a key kept in a file of its own next to the
store, so the SQLite file (and a copy of it, or its WAL) never holds them in the clear, and
they never appear in logs or in ``repr`` of a record.

The audit trail (``audit_log``) is written in batches: events are queued and written together
within ``AUDIT_FLUSH_SECONDS`` (one transaction each would cost more than most of them), so a
crash of the server process loses at most the events of that last window.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from hutch.errors import InvalidArgumentError
from hutch.server.seal import Sealer

# "pooled": started and ready but not handed out yet (the warm pool); never listed.
STATES = ("creating", "pooled", "running", "paused", "killed", "error")
LIVE_STATES = ("creating", "pooled", "running", "paused")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id          TEXT PRIMARY KEY,
    template    TEXT NOT NULL,
    alias       TEXT,
    digest      TEXT,
    state       TEXT NOT NULL,
    reason      TEXT,
    metadata    TEXT NOT NULL DEFAULT '{}',
    env_vars    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    started_at  REAL,
    end_at      REAL NOT NULL,
    ended_at    REAL,
    cpu         REAL NOT NULL,
    memory_mb   INTEGER NOT NULL,
    disk_mb     INTEGER NOT NULL,
    pids        INTEGER NOT NULL,
    network     TEXT NOT NULL,
    access_token TEXT,
    run_dir     TEXT,
    address     TEXT,
    idempotency_key TEXT,
    owner       TEXT,
    egress      TEXT,
    seq         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_state ON sandboxes(state, seq);
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL,
    revoked_at  REAL,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    quota_max_sandboxes      INTEGER,
    quota_max_cpu            REAL,
    quota_max_memory_mb      INTEGER,
    quota_creates_per_minute INTEGER
);
CREATE TABLE IF NOT EXISTS egress_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id  TEXT NOT NULL,
    at          REAL NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS egress_log_sandbox ON egress_log(sandbox_id, seq);
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id  TEXT,
    key_id      TEXT,
    kind        TEXT NOT NULL,
    at          REAL NOT NULL,
    event       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_sandbox ON audit_log(sandbox_id, kind, seq);
CREATE INDEX IF NOT EXISTS audit_log_key ON audit_log(key_id, kind, seq)
    WHERE sandbox_id IS NULL;
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);
"""

#: Audit events kept per sandbox *and kind* (per API key and kind for calls about no sandbox;
#: the oldest go first). Per kind, so that a sandbox flooding its resolver cannot push the
#: record of the commands it was given out of the trail. How often queued events are written.
AUDIT_KEEP = 10_000
AUDIT_FLUSH_SECONDS = 0.2
EGRESS_KINDS = ("dns", "connection", "closed")
EGRESS_KEEP = AUDIT_KEEP


@dataclass(frozen=True)
class SandboxRecord:
    id: str
    template: str
    state: str
    created_at: float
    end_at: float
    cpu: float
    memory_mb: int
    disk_mb: int
    pids: int
    network: str
    alias: str | None = None
    digest: str | None = None
    reason: str | None = None
    metadata: dict = field(default_factory=dict)
    env_vars: dict = field(default_factory=dict, repr=False)
    started_at: float | None = None
    ended_at: float | None = None
    access_token: str | None = field(default=None, repr=False)
    run_dir: str | None = None
    address: str | None = None
    idempotency_key: str | None = None    # the client's Idempotency-Key of the create
    owner: str | None = None              # the id of the API key (tenant) it belongs to
    egress: dict | None = None            # what it may reach (server/egress.py); None: all


_COLUMNS = (
    "id", "template", "alias", "digest", "state", "reason", "metadata", "env_vars",
    "created_at", "started_at", "end_at", "ended_at", "cpu", "memory_mb", "disk_mb", "pids",
    "network", "access_token", "run_dir", "address", "idempotency_key", "owner", "egress",
)

# The id of the key made on first start. Sandboxes recorded before keys were tenants belong
# to it: it was the only key there was.
ADMIN_KEY_ID = "admin"


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the server knows it: never the key itself, only its SHA-256."""

    id: str
    name: str
    created_at: float
    revoked_at: float | None
    admin: bool
    # Per-key tenant quota overrides (hutch.server.quotas.FIELDS); a missing one follows the
    # server's HUTCH_TENANT_* default.
    quotas: dict = field(default_factory=dict)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _json_or_null(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


def _row_to_record(row: sqlite3.Row, sealer: Sealer) -> SandboxRecord:
    values = {c: row[c] for c in _COLUMNS}
    values["metadata"] = json.loads(values["metadata"])
    values["env_vars"] = sealer.open_json(values["env_vars"])
    values["egress"] = json.loads(values["egress"]) if values["egress"] else None
    return SandboxRecord(**values)


# Quota override columns of api_keys (NULL: the server's default), by API field name.
QUOTA_COLUMNS = {
    "max_sandboxes": ("quota_max_sandboxes", "INTEGER"),
    "max_cpu": ("quota_max_cpu", "REAL"),
    "max_memory_mb": ("quota_max_memory_mb", "INTEGER"),
    "creates_per_minute": ("quota_creates_per_minute", "INTEGER"),
}
_KEY_COLUMNS = "id, name, created_at, revoked_at, is_admin, " + ", ".join(
    column for column, _ in QUOTA_COLUMNS.values())


def _row_to_key(row: sqlite3.Row) -> KeyRecord:
    quotas = {name: row[column] for name, (column, _) in QUOTA_COLUMNS.items()
              if row[column] is not None}
    return KeyRecord(id=row["id"], name=row["name"], created_at=row["created_at"],
                     revoked_at=row["revoked_at"], admin=bool(row["is_admin"]), quotas=quotas)


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s{seq}".encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if not raw.startswith("s"):
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgumentError(f"invalid nextToken {token!r}") from None


class Store:
    """Sandbox records and API keys in one SQLite file."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sealer = Sealer.for_store(path)
        self._clock = clock
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # What an update replaces (an env var sealed afresh, pruned audit events) is
        # overwritten on disk, not left in a free page.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute("CREATE INDEX IF NOT EXISTS sandboxes_idem ON "
                         "sandboxes(idempotency_key) WHERE idempotency_key IS NOT NULL")
        path.chmod(0o600)
        row = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM sandboxes").fetchone()
        self._seq = row[0]
        self._audit_pending: list[dict] = []
        self.audit_keep = AUDIT_KEEP
        # Called (no arguments) after each batch is written: the follow streams wake up.
        self.audit_listeners: set[Callable[[], None]] = set()
        self.followers_stopped = False

    def close(self) -> None:
        self.flush_audit()
        self._db.close()

    # -- audit trail ---------------------------------------------------------------------------

    def record(self, event: dict) -> None:
        """Queue one audit event (written within AUDIT_FLUSH_SECONDS). ``event`` has at least
        ``kind`` and ``sandbox_id`` or ``key_id``; ``time`` is added when missing."""
        event.setdefault("time", self._clock())
        self._audit_pending.append(event)
        if len(self._audit_pending) == 1:
            try:
                asyncio.get_running_loop().call_later(AUDIT_FLUSH_SECONDS, self.flush_audit)
            except RuntimeError:          # no event loop: write at once
                self.flush_audit()

    def stop_followers(self) -> None:
        """The server is stopping: every follow stream ends (its client reconnects to the
        next server and asks for what it missed with ``after``)."""
        self.followers_stopped = True
        for listener in list(self.audit_listeners):
            listener()

    #: The egress log is the audit trail's dns/connection/closed events.
    add_egress = record

    def flush_audit(self) -> None:
        pending, self._audit_pending = self._audit_pending, []
        if not pending:
            return
        rows = [(e.get("sandbox_id"), e.get("key_id"), e["kind"], e["time"],
                 json.dumps(e, separators=(",", ":"))) for e in pending]
        self._db.execute("BEGIN")
        try:
            self._db.executemany("INSERT INTO audit_log (sandbox_id, key_id, kind, at, event) "
                                 "VALUES (?, ?, ?, ?, ?)", rows)
            for sandbox_id, key_id, kind in {(r[0], r[1] if r[0] is None else None, r[2])
                                             for r in rows}:
                if sandbox_id is not None:
                    self._db.execute(
                        "DELETE FROM audit_log WHERE sandbox_id=? AND kind=? AND seq <= "
                        "(SELECT seq FROM audit_log WHERE sandbox_id=? AND kind=? "
                        "ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                        (sandbox_id, kind, sandbox_id, kind, self.audit_keep))
                elif key_id is not None:
                    self._db.execute(
                        "DELETE FROM audit_log WHERE sandbox_id IS NULL AND key_id=? AND "
                        "kind=? AND seq <= (SELECT seq FROM audit_log WHERE sandbox_id IS "
                        "NULL AND key_id=? AND kind=? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                        (key_id, kind, key_id, kind, self.audit_keep))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        for listener in list(self.audit_listeners):
            listener()

    def audit(self, *, sandbox_id: str | None = None, key_id: str | None = None,
              kinds: Iterable[str] | None = None, since: float | None = None,
              after: int | None = None, limit: int = 100) -> list[dict]:
        """Audit events of one sandbox (or those of one key about no sandbox), oldest first,
        each with its ``seq``. With ``since`` or ``after`` (a ``seq``): the first ``limit``
        from there on; otherwise the latest ``limit``."""
        self.flush_audit()
        if sandbox_id is not None:
            where, params = ["sandbox_id = ?"], [sandbox_id]
        else:
            where, params = ["sandbox_id IS NULL", "key_id = ?"], [key_id]
        kinds = tuple(kinds or ())
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            params += kinds
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        if after is not None:
            where.append("seq > ?")
            params.append(after)
        forward = since is not None or after is not None
        rows = self._db.execute(
            f"SELECT seq, event FROM audit_log WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'ASC' if forward else 'DESC'} LIMIT ?", (*params, limit)).fetchall()
        if not forward:
            rows.reverse()
        return [{"seq": r[0], **json.loads(r[1])} for r in rows]

    def audit_max_seq(self) -> int:
        """The seq of the newest audit event written (0: none)."""
        self.flush_audit()
        return self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_log").fetchone()[0]

    def egress_log(self, sandbox_id: str, limit: int = 100) -> list[dict]:
        """The sandbox's latest egress decisions, oldest first (as they were recorded)."""
        return [{k: v for k, v in e.items() if k != "seq"}
                for e in self.audit(sandbox_id=sandbox_id, kinds=EGRESS_KINDS, limit=limit)]

    def prune_audit(self, max_age: float, now: float | None = None) -> int:
        """Delete audit events older than ``max_age`` seconds; how many went."""
        self.flush_audit()
        cutoff = (self._clock() if now is None else now) - max_age
        return self._db.execute("DELETE FROM audit_log WHERE at < ?", (cutoff,)).rowcount

    def _migrate(self) -> None:
        """Add columns that newer versions introduced to a store made by an older one."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(sandboxes)")}
        if "idempotency_key" not in have:
            self._db.execute("ALTER TABLE sandboxes ADD COLUMN idempotency_key TEXT")
        if "egress" not in have:
            self._db.execute("ALTER TABLE sandboxes ADD COLUMN egress TEXT")
        if "owner" not in have:
            self._db.execute("ALTER TABLE sandboxes ADD COLUMN owner TEXT")
            self._db.execute("UPDATE sandboxes SET owner=? WHERE state != 'pooled'",
                             (ADMIN_KEY_ID,))
        have = {row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")}
        if "is_admin" not in have:
            self._db.execute("ALTER TABLE api_keys ADD COLUMN is_admin INTEGER NOT NULL "
                             "DEFAULT 0")
            self._db.execute("UPDATE api_keys SET is_admin=1 WHERE id=?", (ADMIN_KEY_ID,))
        for column, kind in QUOTA_COLUMNS.values():
            if column not in have:
                self._db.execute(f"ALTER TABLE api_keys ADD COLUMN {column} {kind}")
        # The egress log became part of the audit trail; env vars written in the clear by an
        # older version are sealed.
        self._db.execute("BEGIN")
        try:
            self._db.execute(
                "INSERT INTO audit_log (sandbox_id, kind, at, event) SELECT sandbox_id, "
                "json_extract(event, '$.kind'), at, event FROM egress_log ORDER BY seq")
            self._db.execute("DELETE FROM egress_log")
            for row in self._db.execute(
                    "SELECT id, env_vars FROM sandboxes WHERE env_vars NOT LIKE ?",
                    (Sealer.PREFIX + "%",)).fetchall():
                self._db.execute("UPDATE sandboxes SET env_vars=? WHERE id=?",
                                 (self._sealer.seal_json(json.loads(row[1])), row[0]))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def by_idempotency_key(self, key: str) -> SandboxRecord | None:
        row = self._db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM sandboxes WHERE idempotency_key=? "
            "ORDER BY seq DESC LIMIT 1", (key,)
        ).fetchone()
        return _row_to_record(row, self._sealer) if row else None

    # -- sandboxes ---------------------------------------------------------------------------

    def insert(self, rec: SandboxRecord) -> None:
        self._seq += 1
        values = [getattr(rec, c) for c in _COLUMNS]
        values[_COLUMNS.index("metadata")] = json.dumps(rec.metadata)
        values[_COLUMNS.index("env_vars")] = self._sealer.seal_json(rec.env_vars)
        values[_COLUMNS.index("egress")] = _json_or_null(rec.egress)
        marks = ",".join("?" * (len(_COLUMNS) + 1))
        self._db.execute(
            f"INSERT INTO sandboxes ({','.join(_COLUMNS)}, seq) VALUES ({marks})",
            (*values, self._seq),
        )

    def update(self, rec: SandboxRecord, **changes) -> SandboxRecord:
        """Write ``changes`` to the record and return the updated copy."""
        bad = set(changes) - set(_COLUMNS) - {"id"}
        if bad or "id" in changes:
            raise ValueError(f"cannot update {sorted(bad) or ['id']}")
        if "state" in changes and changes["state"] not in STATES:
            raise ValueError(f"unknown state {changes['state']!r}")
        new = replace(rec, **changes)
        cols = list(changes)
        params = [self._sealer.seal_json(changes[c]) if c == "env_vars"
                  else json.dumps(changes[c]) if c == "metadata"
                  else _json_or_null(changes[c]) if c == "egress" else changes[c]
                  for c in cols]
        self._db.execute(
            f"UPDATE sandboxes SET {','.join(c + '=?' for c in cols)} WHERE id=?",
            (*params, rec.id),
        )
        return new

    def move_to_end(self, sandbox_id: str) -> None:
        """Order the record as if inserted now (a pooled sandbox handed out lists as new)."""
        self._seq += 1
        self._db.execute("UPDATE sandboxes SET seq=? WHERE id=?", (self._seq, sandbox_id))

    def get(self, sandbox_id: str) -> SandboxRecord | None:
        row = self._db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM sandboxes WHERE id=?", (sandbox_id,)
        ).fetchone()
        return _row_to_record(row, self._sealer) if row else None

    def in_states(self, states: Iterable[str]) -> list[SandboxRecord]:
        states = tuple(states)
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM sandboxes WHERE state IN ({marks}) ORDER BY seq",
            states,
        ).fetchall()
        return [_row_to_record(r, self._sealer) for r in rows]

    def page(
        self,
        *,
        states: Iterable[str],
        metadata: dict[str, str] | None = None,
        template: str | None = None,
        started_after: float | None = None,
        owner: str | None = None,
        limit: int = 100,
        next_token: str | None = None,
        descending: bool = False,
    ) -> tuple[list[SandboxRecord], str | None]:
        """One page of records matching the filters, and the token of the next page (or None).

        Pages are keyed by insertion order (a cursor, not an offset), so sandboxes created or
        killed while a client pages never shift or duplicate entries.
        """
        states = tuple(states)
        where = [f"state IN ({','.join('?' * len(states))})"]
        params: list = list(states)
        if template:
            where.append("(template=? OR alias=?)")
            params += [template, template]
        if started_after is not None:
            where.append("created_at > ?")
            params.append(started_after)
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        for key, value in (metadata or {}).items():
            where.append("json_extract(metadata, ?) = ?")
            params += ['$."' + key.replace('"', '""') + '"', value]
        if next_token:
            where.append("seq < ?" if descending else "seq > ?")
            params.append(_decode_cursor(next_token))
        order = "DESC" if descending else "ASC"
        rows = self._db.execute(
            f"SELECT {','.join(_COLUMNS)}, seq FROM sandboxes WHERE {' AND '.join(where)} "
            f"ORDER BY seq {order} LIMIT ?",
            (*params, limit + 1),
        ).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        token = _encode_cursor(rows[-1]["seq"]) if more and rows else None
        return [_row_to_record(r, self._sealer) for r in rows], token

    # -- API keys ----------------------------------------------------------------------------

    def add_key(self, key_id: str, name: str, key: str, *, admin: bool = False,
                quotas: dict | None = None) -> KeyRecord:
        now = time.time()
        quotas = {k: v for k, v in (quotas or {}).items() if v is not None}
        columns = [QUOTA_COLUMNS[k][0] for k in quotas]
        self._db.execute(
            f"INSERT INTO api_keys (id, name, hash, created_at, is_admin"
            f"{''.join(', ' + c for c in columns)}) VALUES (?,?,?,?,?{',?' * len(columns)})",
            (key_id, name, hash_key(key), now, int(admin), *quotas.values()),
        )
        return KeyRecord(id=key_id, name=name, created_at=now, revoked_at=None, admin=admin,
                         quotas=quotas)

    def set_key_quotas(self, key_id: str, quotas: dict) -> KeyRecord | None:
        """Change a key's quota overrides (None: back to the server's default); the other
        overrides stay. Takes effect from the next request: keys are never cached."""
        if quotas:
            sets = ", ".join(f"{QUOTA_COLUMNS[k][0]}=?" for k in quotas)
            self._db.execute(f"UPDATE api_keys SET {sets} WHERE id=?",
                             (*quotas.values(), key_id))
        return self.get_key(key_id)

    def key_for(self, key: str) -> KeyRecord | None:
        """The active key whose plaintext is ``key``, or None (unknown or revoked).

        Read on every request, never cached: a revocation holds from the next request on."""
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE hash=? AND revoked_at IS NULL",
            (hash_key(key),)
        ).fetchone()
        return _row_to_key(row) if row else None

    def get_key(self, key_id: str) -> KeyRecord | None:
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id=?", (key_id,)
        ).fetchone()
        return _row_to_key(row) if row else None

    def keys(self) -> list[KeyRecord]:
        rows = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ).fetchall()
        return [_row_to_key(r) for r in rows]

    def key_valid(self, key: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM api_keys WHERE hash=? AND revoked_at IS NULL", (hash_key(key),)
        ).fetchone()
        return row is not None

    def has_keys(self) -> bool:
        return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def revoke_key(self, key_id: str) -> bool:
        cur = self._db.execute(
            "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return cur.rowcount > 0
