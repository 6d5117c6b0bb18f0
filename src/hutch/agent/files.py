"""``GET/POST /files``: download and upload file bodies as the requesting user.

Uploads stream to disk as they arrive (octet-stream, optionally gzip-encoded, or multipart with
several files); downloads stream from disk, gzip-compressed when the client asks for it.

Big plain transfers take the short ways: an octet-stream upload of known length is read off
the socket by the user's thread into one reused buffer, and a download of a regular file goes
from the page cache to the socket with sendfile under a Content-Length. Either way an upload
is acknowledged only once its data is on disk (fsync), with writeback started as it arrives.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import os
import stat
import time
import zlib
from typing import AsyncIterator, Dict, List, Optional, Tuple

from ..errors import (
    AuthenticationError, HutchError, InvalidArgumentError, NotFoundError, PermissionDeniedError,
)
from ..protocol import envd
from ..protocol.envelope import dumps
from . import filesystem
from .http import DRAIN, Body, FileBody, Request, Response, http_error, receive_into
from .multipart import MultipartReader, boundary_of, disposition
from .state import AgentState
from .users import User, lookup, may_act_as_root

CHUNK = 1024 * 1024
SMALL = 256 * 1024


def error_response(exc: BaseException) -> Response:
    if isinstance(exc, OSError):
        exc = filesystem.translate(exc, exc.filename or "")
    if isinstance(exc, NotFoundError):
        return http_error(404, exc.message)
    if isinstance(exc, HutchError):
        return http_error(exc.status if exc.status >= 400 else 500, exc.message)
    raise exc


def signature_for(path: str, operation: str, username: str, token: str, expiration: Optional[int]) -> str:
    """The ``v1_`` URL signature the SDK makes for ``download_url`` / ``upload_url``."""
    import hashlib

    raw = f"{path}:{operation}:{username}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode()).digest()
    return "v1_" + base64.b64encode(digest).decode().rstrip("=")


def check_access(state: AgentState, request: Request, operation: str) -> None:
    """Accept the access token, or a valid unexpired signature for this path and operation."""
    if state.token_ok(request.headers.get(envd.HEADER_ACCESS_TOKEN)):
        return
    signature = request.arg("signature")
    if not signature:
        raise AuthenticationError("missing or invalid access token")
    raw_exp = request.arg("signature_expiration")
    expiration = None
    if raw_exp:
        try:
            expiration = int(raw_exp)
        except ValueError:
            raise AuthenticationError("invalid signature expiration") from None
        if expiration < time.time():
            raise AuthenticationError("signature is already expired")
    import hmac

    expected = signature_for(
        request.arg("path") or "", operation, request.arg("username") or "", state.access_token or "", expiration
    )
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise AuthenticationError("invalid signature")


# -- blocking helpers (run on the user's thread) ------------------------------------------------


def _open_read(path: str) -> Tuple[int, Optional[bytes], int]:
    """An open fd and its size, or (-1, the whole content, size) for a small file (or one whose
    size says nothing, as in /proc): those are answered in one piece."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise InvalidArgumentError(f"path {path!r} is a directory")
    data = None
    if st.st_size <= SMALL:
        parts = []
        while True:
            piece = os.read(fd, CHUNK)
            if not piece:
                break
            parts.append(piece)
        os.close(fd)
        data, fd = b"".join(parts), -1
    elif stat.S_ISREG(st.st_mode):
        # Read ahead generously: the whole file is about to be sent.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd, data, st.st_size if stat.S_ISREG(st.st_mode) else -1


def _read_ahead(fd: int, offset: int, length: int) -> None:
    """Have the kernel read a range of the file into the page cache (a hint: failures are
    the download's to meet, if they are real)."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def _open_write(path: str) -> Tuple[int, str]:
    """Open a new hidden file next to ``path`` for an upload; ``_finish`` renames it into place.

    Writing beside the target and renaming makes an upload atomic: readers see the old
    content or the new, never a half-written file, and a failed upload leaves the old file
    as it was. An existing file's permission bits carry over to its replacement."""
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None and stat.S_ISDIR(old.st_mode):
        raise InvalidArgumentError(f"path {path!r} is a directory")
    if old is not None and not stat.S_ISREG(old.st_mode):
        # A device, FIFO or socket is written to, never replaced.
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC), path
    # os.urandom rather than the secrets module: that imports hmac, and with it OpenSSL
    # (several MiB of every idle sandbox's memory).
    tmp = os.path.join(parent, f".{os.path.basename(path)[:100]}{filesystem.UPLOAD_MARKER}{os.urandom(6).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except PermissionError:
        if old is None:
            raise
        # A writable file in a directory the user may not write: replace its content in place
        # (the only write the permissions allow; not atomic).
        return os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC), path
    if old is not None:
        try:
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
    return fd, tmp


def _open_write_for(path: str, owner: User) -> Tuple[int, str]:
    """``_open_write`` done as root on behalf of ``owner``, who gets what is created."""
    parent = os.path.dirname(path)
    missing = []
    while parent and parent != "/" and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    try:
        old = os.stat(path)
        uid, gid = old.st_uid, old.st_gid      # a replaced file keeps its owner
    except FileNotFoundError:
        uid, gid = owner.uid, owner.gid
    fd, tmp = _open_write(path)
    for d in reversed(missing):
        os.lchown(d, owner.uid, owner.gid)
    if tmp != path:
        os.fchown(fd, uid, gid)
    return fd, tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _finish(fd: int, tmp: str, path: str, metadata: Dict[str, str]) -> None:
    """Store ``metadata`` as xattrs, flush the data to disk, and rename the file into place."""
    try:
        try:
            for key, value in metadata.items():
                os.setxattr(fd, envd.METADATA_XATTR_PREFIX + key.lower(), value.encode())
        except OSError as exc:
            if metadata or exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        if tmp != path:
            _discard(tmp)
        raise
    os.close(fd)
    if tmp == path:
        return
    try:
        os.rename(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    _sync_dir(os.path.dirname(path) or ".")


def _sync_dir(path: str) -> None:
    """Make a rename durable: the upload is acknowledged only after this, and without it
    a host crash may bring back the old name (or none) even though the data was flushed."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


class FilesRoute:
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def handle(self, request: Request) -> Response:
        try:
            operation = "read" if request.method == "GET" else "write"
            if request.method not in ("GET", "POST"):
                return http_error(405, "method not allowed")
            check_access(self.state, request, operation)
            user = self.state.user(request.arg("username"))
            if request.method == "GET":
                return await self._download(request, user)
            return await self._upload(request, user)
        except AuthenticationError as exc:
            return http_error(401, exc.message)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)

    async def _download(self, request: Request, user: User) -> Response:
        raw = request.arg("path")
        if not raw:
            return http_error(400, "path is required")
        path = self.state.resolve(user, raw)
        encodings = {e.split(";")[0].strip().lower() for e in request.headers.get("accept-encoding", "").split(",")}
        encodings.discard("")
        # Compress only on an explicit request for gzip (the SDK's gzip=True sends exactly that).
        # A generic client default such as "gzip, deflate" gets identity, which is always
        # acceptable: on the sandbox's local link compression costs more than it saves.
        use_gzip = encodings - {"identity"} == {"gzip"}
        if encodings and not use_gzip and not {"identity", "*", "gzip", "deflate", "br", "zstd"} & encodings:
            return http_error(406, "unsupported Accept-Encoding; use gzip or identity")
        fd, data, size = await self.state.identities.run(user, filesystem.guarded, _open_read, path)
        name = os.path.basename(path).replace('"', "")
        headers = [("Content-Disposition", f'inline; filename="{name}"')]
        if use_gzip:
            headers.append(("Content-Encoding", "gzip"))
        ctype = "application/octet-stream"
        if data is not None:
            if use_gzip:
                comp = zlib.compressobj(6, zlib.DEFLATED, 31)
                data = comp.compress(data) + comp.flush()
            return Response(200, data, headers, content_type=ctype)
        if not use_gzip and size >= 0:
            # A regular file goes from the page cache to the socket in the kernel (sendfile),
            # its pages read in ahead by the user's thread so the event loop never waits on
            # the disk for long.
            run = self.state.identities.run

            async def advise(offset: int, length: int) -> None:
                await run(user, _read_ahead, fd, offset, length)

            return Response(200, FileBody(fd, size, advise), headers, content_type=ctype)
        return Response(200, self._stream_file(fd, user, use_gzip), headers, content_type=ctype)

    async def _stream_file(self, fd: int, user: User, use_gzip: bool) -> AsyncIterator[bytes]:
        # Level 1 on big files: several times faster than the default, most of the gain.
        comp = zlib.compressobj(1, zlib.DEFLATED, 31) if use_gzip else None
        try:
            while True:
                data = await self.state.identities.run(user, os.read, fd, CHUNK)
                if not data:
                    break
                if comp is not None:
                    data = comp.compress(data)
                if data:
                    yield data
            if comp is not None:
                yield comp.flush()
        finally:
            os.close(fd)

    async def _upload(self, request: Request, user: User) -> Response:
        metadata = {
            name[len(envd.METADATA_HEADER_PREFIX):]: value
            for name, value in request.headers.items()
            if name.startswith(envd.METADATA_HEADER_PREFIX) and len(name) > len(envd.METADATA_HEADER_PREFIX)
        }
        ctype = request.headers.get("content-type", "application/octet-stream")
        written: List[Dict[str, object]] = []
        shown = {k.lower(): v for k, v in metadata.items()}

        def info(path: str) -> Dict[str, object]:
            out: Dict[str, object] = {"name": os.path.basename(path), "type": "file", "path": path}
            if shown:
                out["metadata"] = shown
            return out

        query_path = request.arg("path")
        if ctype.lower().startswith("multipart/form-data"):
            reader = MultipartReader(request.body, boundary_of(ctype))
            async for headers, chunks in reader.parts():
                params = disposition(headers)
                target = query_path if (query_path and not written) else params.get("filename")
                if not target:
                    raise InvalidArgumentError("a multipart file part needs a filename or ?path=")
                path = self.state.resolve(user, target)
                encoding = headers.get("content-encoding", "").lower()
                await self._write(user, path, chunks, encoding == "gzip", metadata)
                written.append(info(path))
            if not written:
                raise InvalidArgumentError("the multipart body holds no file")
        else:
            if not query_path:
                raise InvalidArgumentError("path is required for an octet-stream upload")
            path = self.state.resolve(user, query_path)
            encoding = request.headers.get("content-encoding", "").lower()
            if encoding not in ("", "identity", "gzip"):
                return http_error(415, f"unsupported Content-Encoding {encoding!r}")
            await self._write(user, path, request.body, encoding == "gzip", metadata,
                              direct=request.body)
            written.append(info(path))
        return Response(200, dumps(written), content_type="application/json")

    async def _write(self, user: User, path: str, chunks, gunzip: bool, metadata: Dict[str, str],
                     direct: Optional[Body] = None) -> None:
        """Stream ``chunks`` into ``path`` as ``user``.

        The disk write of one MiB overlaps with receiving the next: one write is in flight on
        the user's thread while the event loop keeps reading the socket. A plain body of known
        length (``direct``) is read off the socket by that thread itself (see _receive).
        """
        run = self.state.identities.run
        try:
            fd, tmp = await run(user, filesystem.guarded, _open_write, path)
        except PermissionDeniedError:
            if not may_act_as_root(user):
                raise
            # What sudo would do for this user anyway; see users.may_act_as_root.
            owner = user
            user = lookup("root")
            fd, tmp = await run(user, filesystem.guarded, _open_write_for, path, owner)
        inflate = zlib.decompressobj(47) if gunzip else None
        in_flight = None
        sink = _Sink(path, fd)
        try:
            if direct is not None and not gunzip and direct.left >= CHUNK:
                await self._receive(user, sink, direct)
                chunks = _NOTHING
            pending: List[bytes] = []
            size = 0
            async for chunk in chunks:
                if inflate is not None:
                    try:
                        chunk = inflate.decompress(chunk)
                    except zlib.error:
                        raise InvalidArgumentError("body is not valid gzip") from None
                pending.append(chunk)
                size += len(chunk)
                if size >= CHUNK:  # one thread hop per MiB, not per network read
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(
                        run(user, sink.write, b"".join(pending)))
                    pending, size = [], 0
            if inflate is not None:
                pending.append(inflate.flush())
            if in_flight is not None:
                await in_flight
                in_flight = None
            if pending:
                await run(user, sink.write, b"".join(pending))
        except BaseException:
            if in_flight is not None:
                await asyncio.gather(in_flight, return_exceptions=True)  # never close under a write
            os.close(fd)
            if tmp != path:
                await run(user, _discard, tmp)
            raise
        await run(user, filesystem.guarded, _finish_at, path, fd, tmp, metadata)

    async def _receive(self, user: User, sink: "_Sink", body: Body) -> None:
        """Write the rest of a Content-Length ``body`` to ``fd``, read off the socket by the
        user's thread into one reused buffer: one copy in and one out per MiB, no Python
        objects per piece and no pass through the event loop (the stream reader's way cost
        about four times the CPU, and the agent has one core at most).

        What the stream reader already holds is written first, by the same thread; while the
        client sends nothing the thread hands back and the event loop waits for it, so a
        stalled upload holds no thread."""
        run = self.state.identities.run
        view = memoryview(bytearray(CHUNK))
        while not body.done:
            data = await body.read(DRAIN)
            # The reader holds nothing now: take the socket before the loop reads more into it.
            sock = body.detach()
            if sock < 0:
                if data:
                    await run(user, sink.write, data)
                continue
            job = asyncio.ensure_future(run(user, sink.receive, sock, view, body.left, data))
            try:
                moved = await asyncio.shield(job)
            except BaseException:
                # Never let go of the socket or the file while the thread still uses them.
                await asyncio.gather(job, return_exceptions=True)
                raise
            finally:
                body.attach()
            body.advance(moved)


class _Nothing:
    """An empty async iterable (what is left of a body _receive took)."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        raise StopAsyncIteration


_NOTHING = _Nothing()


#: How long the thread reading an upload off the socket waits for more before it hands the
#: wait back to the event loop.
IDLE = 0.2


class _Sink:
    """An upload's file as it is written: whatever thread writes, the kernel is told every
    WRITEBACK bytes to start putting them on disk.

    An upload is answered only after its fsync; left to that fsync, the disk work of the
    whole upload waited until after the last byte came in (~90-140 ms per 100 MiB here).
    Started as the data arrives, it overlaps with receiving and the fsync waits for the last
    few MiB. The hint is posix_fadvise(DONTNEED) on the range just written: on Linux it
    starts writeback of its dirty pages without waiting (sync_file_range would say it more
    directly, but does nothing through overlayfs, the sandbox's root). Pages still dirty or
    under writeback stay cached, so a download right after finds most of them there."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self.offset = self.flushed = 0

    def write(self, data) -> None:
        try:
            _write_all(self.fd, data)
        except OSError as exc:
            raise filesystem.translate(exc, self.path) from None
        self.offset += len(data)
        if self.offset - self.flushed >= WRITEBACK:
            try:
                os.posix_fadvise(self.fd, self.flushed, self.offset - self.flushed,
                                 os.POSIX_FADV_DONTNEED)
            except OSError:
                pass    # not a regular file: nothing to hint
            self.flushed = self.offset

    def receive(self, sock: int, view: memoryview, count: int, first: bytes = b"") -> int:
        """Write ``first``, then move up to ``count`` bytes from socket ``sock`` into the file;
        how many were moved (fewer when the client paused for IDLE seconds). The socket's
        errors are the connection's; the file's are the path's."""
        if first:
            self.write(first)
        moved = 0
        while moved < count:
            n = receive_into(sock, view[:min(len(view), count - moved)], IDLE)
            if n == 0:
                break
            self.write(view[:n])
            moved += n
        return moved


#: Every this many bytes of an upload, the kernel is asked to start writing them to disk.
WRITEBACK = 8 * 1024 * 1024


def _finish_at(path: str, fd: int, tmp: str, metadata: Dict[str, str]) -> None:
    _finish(fd, tmp, path, metadata)
