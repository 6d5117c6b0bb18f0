"""Files in a sandbox: ``sbx.files``.

Contents move through the agent's ``/files`` route as raw bytes (octet-stream), so large
files stream both ways without being held in memory twice; metadata operations are unary
Connect calls of ``filesystem.Filesystem``. Paths are resolved inside the sandbox, as the
requesting user (relative paths start at that user's home).
"""

from __future__ import annotations

from typing import IO, Any, AsyncIterator, Dict, List, Literal, Optional, Sequence, Union

import httpx

from hutch import errors
from hutch.sdk import _errors, _wire
from hutch.sdk._async import _backend
from hutch.sdk._async.commands import OutputHandler
from hutch.sdk._async.transport import AsyncAgent, AsyncEventStream, _timeout
from hutch.sdk._models import EntryInfo, FilesystemEvent, WriteInfo

CHUNK = 1 << 20
WriteData = Union[str, bytes, bytearray, memoryview, IO[Any]]
_FS = "filesystem.Filesystem/"


class AsyncWatchHandle:
    """A running directory watch: events go to ``on_event`` and to ``get_new_events()``."""

    def __init__(self, stream: AsyncEventStream, on_event: Optional[OutputHandler],
                 on_exit: Optional[OutputHandler]) -> None:
        self._stream = stream
        self._on_event = on_event
        self._on_exit = on_exit
        self._events: List[FilesystemEvent] = []
        self._stopped = False
        self._worker = _backend.Worker(self._read, stream.abort)

    async def _read(self) -> None:
        error: Optional[Exception] = None
        try:
            async for message in self._stream.messages:
                found = message.get("filesystem")
                event = FilesystemEvent.from_wire(found) if found else None
                if event is not None:
                    self._events.append(event)
                    await _backend.call(self._on_event, event)
        except Exception as exc:
            if not self._stopped:
                error = exc
        finally:
            try:
                await self._stream.aclose()
            except Exception:
                pass
        await _backend.call(self._on_exit, error)

    def get_new_events(self) -> List[FilesystemEvent]:
        """The events that arrived since the last call."""
        events, self._events = self._events, []
        return events

    async def stop(self) -> None:
        self._stopped = True
        await self._worker.cancel()


class AsyncFilesystem:
    def __init__(self, agent: AsyncAgent) -> None:
        self._agent = agent

    def _params(self, path: str, user: Optional[str]) -> Dict[str, str]:
        params = {"path": path}
        if user:
            params["username"] = user
        return params

    async def read(self, path: str, format: Literal["text", "bytes", "stream"] = "text",
                   user: Optional[str] = None,
                   request_timeout: Optional[float] = None) -> Any:
        """The file's content: ``str`` (text), ``bytearray`` (bytes) or an iterator of chunks."""
        client = self._agent.transport.client
        request = client.build_request(
            "GET", "/files", params=self._params(path, user), headers=self._agent.headers,
            timeout=_timeout(self._agent.config.timeout(request_timeout)),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise await self._agent.lost(exc) from None
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            raise _errors.from_agent(response.status_code, body,
                                     not_found=errors.FileNotFoundError_)
        if format == "stream":
            return self._chunks_of(response)
        try:
            content = await response.aread()
        except httpx.TransportError as exc:
            raise await self._agent.lost(exc) from None
        finally:
            await response.aclose()
        if format == "bytes":
            return bytearray(content)
        return content.decode("utf-8", errors="replace")

    async def _chunks_of(self, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_bytes(CHUNK):
                yield chunk
        except httpx.TransportError as exc:
            raise await self._agent.lost(exc) from None
        finally:
            await response.aclose()

    async def write(self, path: str, data: WriteData, user: Optional[str] = None,
                    request_timeout: Optional[float] = None) -> WriteInfo:
        """Create or overwrite a file (parent directories are created)."""
        written = await self._upload(path, data, user, request_timeout)
        if not written:
            raise errors.SandboxError(f"the agent reported nothing written for {path}")
        return written[0]

    async def write_files(self, files: Sequence[Dict[str, Any]], user: Optional[str] = None,
                          request_timeout: Optional[float] = None) -> List[WriteInfo]:
        """Write several files: ``[{"path": ..., "data": ...}, ...]``."""
        batches = await _backend.gather(
            *[self._upload(f["path"], f["data"], user, request_timeout) for f in files]
        )
        return [info for batch in batches for info in batch]

    async def _upload(self, path: str, data: WriteData, user: Optional[str],
                      request_timeout: Optional[float]) -> List[WriteInfo]:
        if isinstance(data, str):
            data = data.encode()
        streamed = not isinstance(data, (bytes, bytearray, memoryview))
        content: Any = self._chunks_from(data) if streamed else bytes(data)
        try:
            response = await self._agent.transport.client.post(
                "/files", params=self._params(path, user), content=content,
                headers={**self._agent.headers, "Content-Type": "application/octet-stream"},
                # A streamed upload has no deadline: it lasts as long as the source feeds it.
                timeout=_timeout(None if streamed else self._agent.config.timeout(request_timeout)),
            )
        except httpx.TransportError as exc:
            raise await self._agent.lost(exc) from None
        if response.status_code != 200:
            raise _errors.from_agent(response.status_code, response.content,
                                     not_found=errors.FileNotFoundError_)
        return [WriteInfo.from_wire(item) for item in response.json() or []]

    async def _chunks_from(self, source: IO[Any]) -> AsyncIterator[bytes]:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                return
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)

    async def list(self, path: str, depth: Optional[int] = 1, user: Optional[str] = None,
                   request_timeout: Optional[float] = None) -> List[EntryInfo]:
        """Entries under ``path``, ``depth`` levels down (1 = direct children)."""
        if depth is not None and depth < 1:
            raise errors.InvalidArgumentError("depth must be at least 1")
        reply = await self._agent.unary(_FS + "ListDir", {"path": path, "depth": depth or 1},
                                        user=user, request_timeout=request_timeout,
                                        not_found=errors.FileNotFoundError_)
        entries = [EntryInfo.from_wire(e) for e in reply.get("entries") or []]
        return [e for e in entries if e.type is not None]

    async def get_info(self, path: str, user: Optional[str] = None,
                       request_timeout: Optional[float] = None) -> EntryInfo:
        reply = await self._agent.unary(_FS + "Stat", {"path": path}, user=user,
                                        request_timeout=request_timeout,
                                        not_found=errors.FileNotFoundError_)
        return EntryInfo.from_wire(reply.get("entry") or {})

    async def exists(self, path: str, user: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> bool:
        try:
            await self.get_info(path, user, request_timeout)
        except errors.NotFoundError:
            return False
        return True

    async def remove(self, path: str, user: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> None:
        await self._agent.unary(_FS + "Remove", {"path": path}, user=user,
                                request_timeout=request_timeout,
                                not_found=errors.FileNotFoundError_)

    async def rename(self, old_path: str, new_path: str, user: Optional[str] = None,
                     request_timeout: Optional[float] = None) -> EntryInfo:
        reply = await self._agent.unary(_FS + "Move",
                                        {"source": old_path, "destination": new_path},
                                        user=user, request_timeout=request_timeout,
                                        not_found=errors.FileNotFoundError_)
        return EntryInfo.from_wire(reply.get("entry") or {})

    async def make_dir(self, path: str, user: Optional[str] = None,
                       request_timeout: Optional[float] = None) -> bool:
        """Create a directory and its parents; False if it already existed."""
        try:
            await self._agent.unary(_FS + "MakeDir", {"path": path}, user=user,
                                    request_timeout=request_timeout)
        except errors.AlreadyExistsError:
            return False
        return True

    async def watch_dir(self, path: str, on_event: Optional[OutputHandler] = None,
                        on_exit: Optional[OutputHandler] = None, user: Optional[str] = None,
                        request_timeout: Optional[float] = None, timeout: Optional[float] = 60,
                        recursive: bool = False,
                        include_entry: bool = False) -> AsyncWatchHandle:
        """Watch a directory; ``timeout`` (seconds, 0 = none) bounds the watch."""
        request = {"path": path, "recursive": recursive, "includeEntry": include_entry}
        stream = await self._agent.stream(_FS + "WatchDir", request, user=user, timeout=timeout,
                                          request_timeout=request_timeout,
                                          not_found=errors.FileNotFoundError_)
        try:
            first = await stream.first()
            if "start" not in first:
                raise errors.SandboxError(f"expected a start event, got {first!r}")
        except BaseException:
            await stream.aclose()
            raise
        return AsyncWatchHandle(stream, on_event, on_exit)


