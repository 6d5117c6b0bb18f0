"""``filesystem.Filesystem``: stat, list, make, move, remove and watch, as the calling user."""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator, Dict

from ..errors import InvalidArgumentError, NotFoundError
from ..protocol import envd
from ..protocol.envelope import encode_envelope
from ..protocol.protojson import field, parse_int
from . import filesystem
from .rpc import SERVER_STREAM, UNARY, Call
from .state import AgentState
from .watcher import DirWatcher, PolledWatcher


class FilesystemService:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.methods = {
            "Stat": (UNARY, self.stat),
            "MakeDir": (UNARY, self.make_dir),
            "Move": (UNARY, self.move),
            "ListDir": (UNARY, self.list_dir),
            "Remove": (UNARY, self.remove),
            "WatchDir": (SERVER_STREAM, self.watch_dir),
            "CreateWatcher": (UNARY, self.create_watcher),
            "GetWatcherEvents": (UNARY, self.get_watcher_events),
            "RemoveWatcher": (UNARY, self.remove_watcher),
        }

    def _path(self, call: Call, msg: Dict[str, Any], name: str = "path") -> str:
        return self.state.resolve(call.user, field(msg, name))

    def _run(self, call: Call, fn, *args):
        return self.state.identities.run(call.user, fn, *args)

    async def stat(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        return {"entry": await self._run(call, filesystem.stat_entry, self._path(call, msg))}

    async def make_dir(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        return {"entry": await self._run(call, filesystem.make_dir, self._path(call, msg))}

    async def move(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        source = self._path(call, msg, "source")
        destination = self._path(call, msg, "destination")
        return {"entry": await self._run(call, filesystem.move, source, destination)}

    async def list_dir(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        depth = parse_int(field(msg, "depth"), 1) or 1
        entries = await self._run(call, filesystem.list_dir, self._path(call, msg), depth)
        return {"entries": entries}

    async def remove(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        await self._run(call, filesystem.remove, self._path(call, msg))
        return {}

    def _watcher(self, call: Call, msg: Dict[str, Any], sink) -> DirWatcher:
        return DirWatcher(
            self._path(call, msg),
            bool(field(msg, "recursive", False)),
            bool(field(msg, "include_entry", False)),
            sink,
            lambda fn, *args: self.state.identities.run(call.user, fn, *args),
            bool(field(msg, "allow_network_mounts", False)),
            call.user,
        )

    async def watch_dir(self, call: Call, msg: Dict[str, Any]) -> AsyncIterator[bytes]:
        queue: "asyncio.Queue[Dict[str, Any]]" = asyncio.Queue()
        watcher = self._watcher(call, msg, queue.put_nowait)
        await watcher.start()
        return self._watch_stream(watcher, queue, call)

    async def _watch_stream(self, watcher: DirWatcher, queue, call: Call) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + call.timeout if call.timeout else None
        try:
            yield encode_envelope(envd.watch_start_event())
            while True:
                wait = call.keepalive
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - loop.time()))
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if deadline is not None and loop.time() >= deadline:
                        return  # the client's own deadline: end the stream cleanly
                    yield encode_envelope(envd.watch_keepalive_event())
                    continue
                batch = [encode_envelope(envd.watch_filesystem_event(event))]
                while not queue.empty() and len(batch) < 256:
                    batch.append(encode_envelope(envd.watch_filesystem_event(queue.get_nowait())))
                yield b"".join(batch)
        finally:
            watcher.close()

    async def create_watcher(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        polled = PolledWatcher()
        watcher = self._watcher(call, msg, polled.add)
        await watcher.start()
        polled.watcher = watcher
        watcher_id = os.urandom(16).hex()
        self.state.watchers[watcher_id] = polled
        return {"watcherId": watcher_id}

    def _polled(self, msg: Dict[str, Any]) -> PolledWatcher:
        watcher_id = field(msg, "watcher_id")
        if not watcher_id:
            raise InvalidArgumentError("watcherId is required")
        polled = self.state.watchers.get(watcher_id)
        if polled is None:
            raise NotFoundError(f"watcher {watcher_id!r} not found")
        return polled  # type: ignore[return-value]

    async def get_watcher_events(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        polled = self._polled(msg)
        if polled.watcher is not None:
            polled.watcher.poll()
        events = polled.take()
        return {"events": events} if events else {}

    async def remove_watcher(self, call: Call, msg: Dict[str, Any]) -> Dict[str, Any]:
        polled = self._polled(msg)
        self.state.watchers.pop(field(msg, "watcher_id"), None)
        if polled.watcher is not None:
            polled.watcher.close()
        return {}
