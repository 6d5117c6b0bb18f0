"""Tenant quotas: what one API key may hold and start, on top of the server-wide limit.

A key (tenant) is limited in four ways: sandboxes alive at once, CPU cores and memory (MiB)
summed over those sandboxes, and creates admitted per minute. Each limit is the key's own
override if it has one (``POST /keys`` / ``PATCH /keys/{id}``, stored with the key), else the
server's ``HUTCH_TENANT_*`` setting; 0 means no limit. The admin key is exempt: it is the
operator's, and the server-wide ``HUTCH_MAX_SANDBOXES`` still bounds it.

Admission happens in one stretch of the event loop with no ``await`` in it (see
:meth:`Ledger.admit`): the checks read the live sandboxes plus the *reservations* of creates
still in flight, and a passing create reserves its share before anything can interleave. So two
creates racing for the last slot cannot both pass, even though booting a sandbox takes many
awaits before it shows up as live. A reservation is released when its create ends, whatever the
outcome: by then the sandbox is live (and counted as such) or it failed (and holds nothing).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Iterable

from hutch.errors import InvalidArgumentError, RateLimitError

#: The per-key override fields as the API names them, with the setting that gives the default.
FIELDS: dict[str, str] = {
    "max_sandboxes": "HUTCH_TENANT_MAX_SANDBOXES",
    "max_cpu": "HUTCH_TENANT_MAX_CPU",
    "max_memory_mb": "HUTCH_TENANT_MAX_MEMORY_MB",
    "creates_per_minute": "HUTCH_TENANT_CREATES_PER_MINUTE",
}
WINDOW = 60.0   # seconds over which creates_per_minute counts


@dataclass(frozen=True)
class Quotas:
    """The limits in force for one key (0: no limit)."""

    max_sandboxes: int
    max_cpu: float
    max_memory_mb: int
    creates_per_minute: int

    def json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def effective(overrides: dict[str, Any] | None, config: Any) -> Quotas:
    """The key's overrides over the server's tenant defaults."""
    overrides = overrides or {}

    def pick(name: str):
        value = overrides.get(name)
        return getattr(config, f"tenant_{name}") if value is None else value

    return Quotas(max_sandboxes=int(pick("max_sandboxes")), max_cpu=float(pick("max_cpu")),
                  max_memory_mb=int(pick("max_memory_mb")),
                  creates_per_minute=int(pick("creates_per_minute")))


def parse_overrides(value: Any) -> dict[str, Any]:
    """Validate a request's ``quotas`` object: known fields only, each a non-negative number
    (integers but for ``max_cpu``) or null, which returns the field to the server's default."""
    if not isinstance(value, dict):
        raise InvalidArgumentError("quotas must be an object")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise InvalidArgumentError(f"unknown quota {unknown[0]!r}; known: "
                                   f"{', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    for name, v in value.items():
        if v is None:
            out[name] = None
            continue
        integral = name != "max_cpu"
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 \
                or v != v or v == float("inf") or (integral and v != int(v)):
            raise InvalidArgumentError(
                f"quotas.{name} must be a non-negative {'integer' if integral else 'number'} "
                f"(0: no limit) or null (the server's default), got {v!r}")
        out[name] = int(v) if integral else float(v)
    return out


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(eq=False)
class Reservation:
    """The share of one create in flight, held until it ends."""

    owner: str | None
    cpu: float
    memory_mb: int
    sandbox_id: str | None = None   # once known: its live record is then not counted twice


@dataclass(frozen=True)
class Holding:
    """What sandboxes (live or being created) hold, for one tenant or the whole server."""

    sandboxes: int = 0
    cpu: float = 0.0
    memory_mb: int = 0


class Ledger:
    """Creates in flight and the recent creates of each tenant."""

    def __init__(self) -> None:
        self._reserved: list[Reservation] = []
        self._recent: dict[str, deque[float]] = {}

    def holding(self, live: Iterable[Any], owner: str | None = None, *,
                everyone: bool = False) -> Holding:
        """Sum over the given live records (not pooled) and reservations of ``owner`` (or of
        everyone); a record a reservation already stands for is counted once."""
        reserved_ids = {r.sandbox_id for r in self._reserved if r.sandbox_id}
        n, cpu, mem = 0, 0.0, 0
        for rec in live:
            if rec.state == "pooled" or rec.id in reserved_ids:
                continue
            if everyone or rec.owner == owner:
                n, cpu, mem = n + 1, cpu + rec.cpu, mem + rec.memory_mb
        for r in self._reserved:
            if everyone or r.owner == owner:
                n, cpu, mem = n + 1, cpu + r.cpu, mem + r.memory_mb
        return Holding(n, cpu, mem)

    def recent_creates(self, owner: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        times = self._recent.get(owner)
        if not times:
            return 0
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if not times:
            del self._recent[owner]
        return len(times)

    def admit(self, live: Iterable[Any], owner: str | None, quotas: Quotas | None,
              cpu: float, memory_mb: int, max_sandboxes: int) -> Reservation:
        """Check the server-wide limit and the tenant's quotas, then reserve this create's
        share; RateLimitError (429) naming the limit, its value and the use now otherwise.

        Synchronous on purpose: nothing can interleave between the checks and the
        reservation."""
        live = list(live)
        total = self.holding(live, everyone=True)
        if total.sandboxes >= max_sandboxes:
            raise RateLimitError(f"this server runs its maximum of {max_sandboxes} "
                                 f"sandboxes (HUTCH_MAX_SANDBOXES); kill one or retry later")
        now = time.monotonic()
        if quotas is not None and owner is not None:
            mine = self.holding(live, owner)
            q = quotas
            if q.max_sandboxes and mine.sandboxes >= q.max_sandboxes:
                raise RateLimitError(
                    f"tenant quota: at most {q.max_sandboxes} concurrent sandboxes per key "
                    f"({mine.sandboxes} running)")
            if q.max_cpu and mine.cpu + cpu > q.max_cpu + 1e-9:
                raise RateLimitError(
                    f"tenant quota: at most {_num(q.max_cpu)} CPU cores per key "
                    f"({_num(mine.cpu)} in use, this create asks for {_num(cpu)})")
            if q.max_memory_mb and mine.memory_mb + memory_mb > q.max_memory_mb:
                raise RateLimitError(
                    f"tenant quota: at most {q.max_memory_mb} MiB of memory per key "
                    f"({mine.memory_mb} MiB in use, this create asks for {memory_mb} MiB)")
            recent = self.recent_creates(owner, now)
            if q.creates_per_minute and recent >= q.creates_per_minute:
                raise RateLimitError(
                    f"tenant quota: at most {q.creates_per_minute} creates per minute per key "
                    f"({recent} in the last minute)")
            # Admitted creates count, whether or not they then succeed: the limit is on the
            # work a key can make the host start.
            self._recent.setdefault(owner, deque()).append(now)
        reservation = Reservation(owner, cpu, memory_mb)
        self._reserved.append(reservation)
        return reservation

    def release(self, reservation: Reservation) -> None:
        try:
            self._reserved.remove(reservation)
        except ValueError:
            pass
