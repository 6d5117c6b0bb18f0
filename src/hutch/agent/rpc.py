"""Connect-RPC over the agent's HTTP server: unary, server-streaming and client-streaming calls.

Handlers are plain coroutines. Unary handlers take the request message and return the response
message. Server-streaming handlers return an async iterator of messages; an error raised inside
it becomes the end-stream error. Client-streaming handlers get an async iterator of request
messages. Every error is a :class:`hutch.errors.HutchError`, whose ``code`` is the Connect code.
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional

from ..errors import HutchError, InvalidArgumentError
from ..protocol import codes, envd
from ..protocol.envelope import EnvelopeDecoder, EnvelopeError, dumps, encode_end_stream, encode_envelope
from .http import Request, Response

UNARY, SERVER_STREAM, CLIENT_STREAM = "unary", "server", "client"


class Call:
    """What a handler sees besides the message: the HTTP request and resolved user."""

    def __init__(self, request: Request, user: Any) -> None:
        self.request = request
        self.user = user

    @property
    def timeout(self) -> Optional[float]:
        """Seconds from ``Connect-Timeout-Ms``, or None."""
        raw = self.request.headers.get(envd.HEADER_TIMEOUT)
        try:
            return int(raw) / 1000.0 if raw else None
        except ValueError:
            raise InvalidArgumentError("bad Connect-Timeout-Ms") from None

    @property
    def keepalive(self) -> float:
        """Seconds of silence after which a stream sends a keepalive message."""
        raw = self.request.headers.get(envd.HEADER_KEEPALIVE)
        try:
            value = float(raw) if raw else 90.0
        except ValueError:
            value = 90.0
        return value if value > 0 else 90.0


def error_of(exc: BaseException) -> Dict[str, str]:
    if isinstance(exc, HutchError):
        code = exc.code if exc.code in codes.CODE_TO_STATUS else codes.INTERNAL
        return codes.error_body(code, exc.message or code)
    if isinstance(exc, OSError):
        from .filesystem import translate

        return error_of(translate(exc, exc.filename or ""))
    # A bug, not a client error: leave a trace in the agent's log (its stderr).
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return codes.error_body(codes.INTERNAL, f"{type(exc).__name__}: {exc}")


def unary_error(exc: BaseException) -> Response:
    body = error_of(exc)
    return Response(
        codes.status_for_code(body["code"]), dumps(body), content_type=envd.CONTENT_TYPE_UNARY
    )


def _parse_json(raw: bytes) -> Dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        msg = json.loads(raw)
    except ValueError:
        raise InvalidArgumentError("request message is not valid JSON") from None
    if not isinstance(msg, dict):
        raise InvalidArgumentError("request message must be a JSON object")
    return msg


async def serve_unary(call: Call, handler: Callable[[Call, Dict[str, Any]], Awaitable[Dict[str, Any]]]) -> Response:
    ctype = call.request.headers.get("content-type", envd.CONTENT_TYPE_UNARY)
    if "proto" in ctype:  # the binary codec: Connect answers an unsupported codec with 415
        return Response(415, dumps(codes.error_body(codes.UNIMPLEMENTED, "only the JSON codec is served")),
                        content_type=envd.CONTENT_TYPE_UNARY)
    try:
        message = _parse_json(await call.request.body.read_all())
        result = await handler(call, message)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a Connect error
        return unary_error(exc)
    return Response(200, dumps(result), content_type=envd.CONTENT_TYPE_UNARY)


async def _first_envelope(call: Call) -> Dict[str, Any]:
    decoder = EnvelopeDecoder()
    try:
        frames = decoder.feed(await call.request.body.read_all())
        decoder.close()
    except EnvelopeError as exc:
        raise InvalidArgumentError(str(exc)) from None
    if not frames:
        return {}
    return _parse_json(frames[0].payload)


async def serve_server_stream(
    call: Call, handler: Callable[[Call, Dict[str, Any]], Awaitable[AsyncIterator[bytes]]]
) -> Response:
    """Answer 200; messages (already enveloped by the handler), then the end-stream message.

    The request envelope is read and the handler started before answering, so that the HTTP
    server sees a finished request body and can watch the connection for the client leaving.
    """
    try:
        message = await _first_envelope(call)
        stream = await handler(call, message)
    except Exception as exc:  # noqa: BLE001 - becomes the end-stream error
        return Response(200, encode_end_stream(error_of(exc)), content_type=envd.CONTENT_TYPE_STREAM)

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream:
                yield chunk
        except Exception as exc:  # noqa: BLE001
            yield encode_end_stream(error_of(exc))
            return
        finally:
            await stream.aclose()
        yield encode_end_stream()

    return Response(200, body(), content_type=envd.CONTENT_TYPE_STREAM)


async def request_messages(call: Call) -> AsyncIterator[Dict[str, Any]]:
    """Each request envelope of a client stream, parsed, as soon as it has arrived."""
    decoder = EnvelopeDecoder()
    async for chunk in call.request.body:
        try:
            frames = decoder.feed(chunk)
        except EnvelopeError as exc:
            raise InvalidArgumentError(str(exc)) from None
        for frame in frames:
            if frame.end_stream:
                return
            yield _parse_json(frame.payload)


async def serve_client_stream(
    call: Call, handler: Callable[[Call, AsyncIterator[Dict[str, Any]]], Awaitable[Dict[str, Any]]]
) -> Response:
    try:
        result = await handler(call, request_messages(call))
    except Exception as exc:  # noqa: BLE001
        # Finish reading so the connection stays usable; give up if the client keeps sending.
        return Response(200, encode_end_stream(error_of(exc)), content_type=envd.CONTENT_TYPE_STREAM)
    return Response(
        200, encode_envelope(result) + encode_end_stream(), content_type=envd.CONTENT_TYPE_STREAM
    )
