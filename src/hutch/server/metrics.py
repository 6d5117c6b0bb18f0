"""Prometheus metrics of one server, served at ``GET /metrics`` to the admin key.

Two kinds of numbers. Events are counted where they happen, into instruments of this server's
own registry: a finished create (in the manager, by where the sandbox came from), a request
relayed to a sandbox (in the data plane, with the latency of a process start and a code run).
State is read when a scrape asks for it: the sandboxes by state, the warm pools, each running
sandbox's CPU and memory from its cgroup. So nothing is kept per sandbox between scrapes, and
a killed sandbox's series simply stop.

The registry belongs to one manager, never prometheus_client's process-wide one: a process
may hold several managers (a program embedding servers, a test), and the global registry
refuses a second instrument of one name.

A cgroup is read through the runtime's ``stats``, which reads files: one worker thread reads
every running sandbox's per scrape, so hundreds of sandboxes cost the event loop one hand-off.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import Counter as Tally
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from hutch.server.reconcile import maybe_await
from hutch.server.store import LIVE_STATES

log = logging.getLogger("hutch.server.metrics")

# The classic text format, which every Prometheus release reads (what is written needs
# nothing newer).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A pooled create takes milliseconds, a cold one tens to hundreds of them; one that has to
# build its template first lands past the last bucket.
CREATE_BUCKETS = (.002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30)
# A command or a cell runs as long as its author wants: the same, and then some.
EXEC_BUCKETS = CREATE_BUCKETS + (60, 300, 1800)


class Metrics:
    """This server's instruments, and the scrape that adds what is true right now."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._create = Histogram(
            "hutch_sandbox_create_seconds",
            "Sandbox creates that succeeded, from the request to the sandbox being ready; "
            "source: pool (a warm sandbox handed out) or cold (started for the request).",
            ("template", "source"), buckets=CREATE_BUCKETS, registry=self.registry)
        self._exec = Histogram(
            "hutch_exec_seconds",
            "Process starts (kind=exec: envd process.Process/Start) and code runs "
            "(kind=run_code: the code interpreter's POST /execute) relayed to a sandbox, "
            "from the request to the end of its streamed answer (the command's or the "
            "cell's whole run); answered 200 and streamed to the end only.",
            ("kind",), buckets=EXEC_BUCKETS, registry=self.registry)
        self._requests = Counter(
            "hutch_proxy_requests",
            "Requests relayed to sandboxes by the data plane; service: envd (the agent), "
            "code_interpreter or port (a port of the sandbox's own); status: the HTTP "
            "status answered, or aborted when the client left or the sandbox was killed "
            "before one.",
            ("service", "status"), registry=self.registry)

    # -- events ------------------------------------------------------------------------------

    def created(self, template: str, source: str, seconds: float) -> None:
        """A create succeeded: ``source`` is ``pool`` or ``cold``."""
        self._create.labels(template, source).observe(seconds)

    def relayed(self, service: str, status: int | None, kind: str | None,
                seconds: float, complete: bool) -> None:
        """A data-plane request ended; ``kind`` (exec, run_code) times it when it was
        answered 200 and streamed to its end."""
        self._requests.labels(service, "aborted" if status is None else str(status)).inc()
        if kind is not None and status == 200 and complete:
            self._exec.labels(kind).observe(seconds)

    # -- the scrape --------------------------------------------------------------------------

    async def render(self, manager: Any) -> bytes:
        """The exposition text: the instruments, then the state read now."""
        families = await _state(manager)
        return generate_latest(_Scrape(self.registry, families))


class _Scrape:
    """What one scrape writes: the registry's instruments, then ``families`` (read now).

    A collector of its own per scrape, so that two scrapes at once never share state."""

    def __init__(self, registry: CollectorRegistry, families: list[Metric]) -> None:
        self._registry = registry
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._families


async def _state(manager: Any) -> list[Metric]:
    """The families read at scrape time: sandboxes by state, pools, per-sandbox usage."""
    # The manager's own table of the sandboxes it serves: reading the store instead would
    # decode (and unseal) every record on each scrape.
    lives = [live.record for live in list(getattr(manager, "_live", {}).values())]
    families: list[Metric] = [_sandboxes(lives)]
    families += _pools(manager)
    running = [(rec.id, rec.template) for rec in lives if rec.state == "running"]
    usage = await _usage(getattr(manager, "runtime", None), [sid for sid, _ in running])
    families += _sandbox_usage(running, usage)
    return families


def _sandboxes(records: Iterable[Any]) -> Metric:
    by_state = Tally(rec.state for rec in records)
    family = GaugeMetricFamily(
        "hutch_sandboxes", "Sandboxes this server holds, by state (pooled: warm, not handed "
        "out yet).", labels=["state"])
    for state in sorted(set(LIVE_STATES) | set(by_state)):
        family.add_metric([state], by_state.get(state, 0))
    return family


# -- warm pools -------------------------------------------------------------------------------


def _pool_stats(manager: Any) -> list[dict]:
    """Each warm pool's ``stats()``: from ``manager.pools`` (template name -> pool) when the
    manager has it, else from its single ``manager.pool``, whose stats are its template, size
    and ready count only."""
    pools = getattr(manager, "pools", None)
    if isinstance(pools, dict):
        items = list(pools.items())
    else:
        pool = getattr(manager, "pool", None)
        items = [] if pool is None else [(getattr(pool, "template", ""), pool)]
    out = []
    for name, pool in items:
        try:
            if callable(getattr(pool, "stats", None)):
                stats = dict(pool.stats())
            else:
                stats = {"size": getattr(pool, "size", None),
                         "ready": getattr(pool, "ready", None)}
        except Exception:   # noqa: BLE001 - one pool's trouble does not fail the scrape
            log.exception("reading warm pool %s for metrics failed", name)
            continue
        stats["template"] = str(stats.get("template") or getattr(pool, "template", "") or name)
        out.append(stats)
    return out


def _pools(manager: Any) -> list[Metric]:
    """Pool gauges and counters; a figure a pool does not report gets no series."""
    stats = _pool_stats(manager)
    size = GaugeMetricFamily("hutch_pool_size", "Warm sandboxes a pool keeps (its target).",
                             labels=["template"])
    ready = GaugeMetricFamily("hutch_pool_ready", "Warm sandboxes ready to hand out now.",
                              labels=["template"])
    starting = GaugeMetricFamily("hutch_pool_starting",
                                 "Warm sandboxes being started to refill a pool.",
                                 labels=["template"])
    claims = CounterMetricFamily(
        "hutch_pool_claims", "Creates a pool could serve: result=hit (a warm sandbox was "
        "handed out) or miss (none was ready, or the one taken was unusable: started cold).",
        labels=["template", "result"])
    refill = SummaryMetricFamily(
        "hutch_pool_refill_seconds", "Refill lag: from a warm sandbox being handed out to its "
        "replacement being ready (count: refills).", labels=["template"])
    last = GaugeMetricFamily("hutch_pool_last_refill_seconds", "The latest refill's lag.",
                             labels=["template"])
    for s in stats:
        t = [s["template"]]
        for family, key in ((size, "size"), (ready, "ready"), (starting, "starting"),
                            (last, "last_refill_seconds")):
            if _number(s.get(key)) is not None:
                family.add_metric(t, _number(s.get(key)))
        for result, key in (("hit", "hits"), ("miss", "misses")):
            if _number(s.get(key)) is not None:
                claims.add_metric(t + [result], _number(s.get(key)))
        count, total = _number(s.get("refills")), _number(s.get("refill_seconds_sum"))
        if count is not None and total is not None:
            refill.add_metric(t, count_value=count, sum_value=total)
    return [size, ready, starting, claims, refill, last]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


# -- per-sandbox usage ------------------------------------------------------------------------


class _NeedsLoop(Exception):
    """A runtime's ``stats`` that did not finish without the event loop."""


def _settle(value: Any) -> Any:
    """``value``, run to its end if it is awaitable and needs nothing from an event loop
    (an ``async def`` that only reads files finishes on its first step); else _NeedsLoop."""
    if not inspect.isawaitable(value):
        return value
    steps = value.__await__()
    try:
        steps.send(None)
    except StopIteration as done:
        return done.value
    except Exception as exc:   # say it asked for the running loop: try it there
        raise _NeedsLoop() from exc
    steps.close()
    raise _NeedsLoop()


def _read_all(stats, ids: list[str]) -> tuple[dict[str, dict], list[str]]:
    """In a worker thread: every sandbox's stats that can be read here, and the ids whose
    ``stats`` must run on the event loop instead."""
    found: dict[str, dict] = {}
    later: list[str] = []
    for sid in ids:
        try:
            value = _settle(stats(sid))
        except _NeedsLoop:
            later.append(sid)
            continue
        except Exception:   # noqa: BLE001 - ended meanwhile, or the runtime cannot tell
            continue
        if value:
            found[sid] = value
    return found, later


async def _usage(runtime: Any, ids: list[str]) -> dict[str, dict]:
    stats = getattr(runtime, "stats", None)
    if stats is None or not ids:
        return {}
    found, later = await asyncio.get_running_loop().run_in_executor(
        None, _read_all, stats, ids)
    for sid in later:
        try:
            value = await maybe_await(stats(sid))
        except Exception:   # noqa: BLE001 - ended meanwhile, or the runtime cannot tell
            continue
        if value:
            found[sid] = value
    return found


def _sandbox_usage(running: list[tuple[str, str]], usage: dict[str, dict]) -> list[Metric]:
    cpu = CounterMetricFamily(
        "hutch_sandbox_cpu_seconds", "CPU time the running sandbox's processes used since it "
        "started (its cgroup).", labels=["sandbox_id", "template"])
    memory = GaugeMetricFamily(
        "hutch_sandbox_memory_bytes", "Memory the running sandbox uses now, page cache "
        "included (its cgroup).", labels=["sandbox_id", "template"])
    for sid, template in running:
        got = usage.get(sid)
        if not got:
            continue
        if _number(got.get("cpu_ns")) is not None:
            cpu.add_metric([sid, template], got["cpu_ns"] / 1e9)
        if _number(got.get("memory_bytes")) is not None:
            memory.add_metric([sid, template], got["memory_bytes"])
    return [cpu, memory]
