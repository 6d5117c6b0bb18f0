"""The HTTP edge of the SDK: the control plane (REST) and one sandbox's agent (data plane).

Both planes go to the same server URL over one connection pool. Data-plane requests carry
``E2b-Sandbox-Id`` / ``E2b-Sandbox-Port`` so the server forwards them to the sandbox's
agent, and ``X-Access-Token`` when the sandbox has one. HTTP/1.1 only: every open stream
(a running command, a watch) holds its own connection, hence the large pool.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Dict, Optional, Type

import httpx

from hutch import errors
from hutch.sdk import _errors, _wire
from hutch.sdk._async import _backend
from hutch.sdk._config import ConnectionConfig

USER_AGENT = "hutch-python-sdk/0.1.0"
_LIMITS = httpx.Limits(max_connections=200, max_keepalive_connections=20, keepalive_expiry=30)


# The server refused without doing anything (busy, rate-limited): worth another try or two.
API_RETRY_STATUSES = (429, 503)
API_ATTEMPTS = 3
MAX_RETRY_DELAY = 10.0


def retry_delay(response: httpx.Response, attempt: int) -> Optional[float]:
    """Seconds to wait before retrying ``response``, or None for "do not retry"."""
    if response.status_code not in API_RETRY_STATUSES or attempt >= API_ATTEMPTS:
        return None
    if response.headers.get("Should-Retry", "").lower() == "false":
        return None
    try:
        return min(float(response.headers["Retry-After"]), MAX_RETRY_DELAY)
    except (KeyError, ValueError):
        return 0.25 * 2 ** (attempt - 1)


def _timeout(seconds: Optional[float], read: Optional[float] = -1.0) -> httpx.Timeout:
    """Connect/write/pool bounded by ``seconds``; ``read`` may differ (streams, uploads)."""
    return httpx.Timeout(seconds, read=seconds if read == -1.0 else read)


class AsyncTransport:
    """Owns the HTTP client; closes it on ``aclose()`` (or leaving ``async with``)."""

    def __init__(self, config: ConnectionConfig) -> None:
        self.config = config
        headers = {"User-Agent": USER_AGENT}
        self._client = httpx.AsyncClient(
            base_url=config.url, headers=headers, limits=_LIMITS,
            timeout=_timeout(config.request_timeout),
        )

    async def __aenter__(self) -> "AsyncTransport":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        return self._client

    def unreachable(self, exc: httpx.TransportError) -> errors.HutchError:
        if isinstance(exc, httpx.TimeoutException):
            return errors.TimeoutError_(f"request to {self.config.url} timed out: {exc!r}")
        return errors.UnavailableError(f"cannot reach the hutch server at {self.config.url}: {exc!r}")

    async def api(self, method: str, path: str, *, json_body: Any = None,
                  params: Optional[Dict[str, Any]] = None,
                  request_timeout: Optional[float] = None,
                  not_found: Type[errors.HutchError] = errors.SandboxNotFoundError,
                  headers: Optional[Dict[str, str]] = None) -> httpx.Response:
        """One control-plane call; any status >= 300 raises the matching hutch error."""
        if not self.config.api_key:
            raise errors.AuthenticationError(
                "no API key: pass api_key=..., set HUTCH_API_KEY, or run as root next to the server"
            )
        for attempt in range(1, API_ATTEMPTS + 1):
            try:
                response = await self._client.request(
                    method, path, json=json_body, params=params,
                    headers={**(headers or {}), "X-API-KEY": self.config.api_key},
                    timeout=_timeout(self.config.timeout(request_timeout)),
                )
            except httpx.TransportError as exc:
                raise self.unreachable(exc) from None
            delay = retry_delay(response, attempt)
            if delay is None:
                break
            await _backend.sleep(delay)
        if response.status_code >= 300:
            raise _errors.from_api(response.status_code, response.content, not_found=not_found)
        return response


    async def api_lines(self, path: str, *,
                        params: Optional[Dict[str, Any]] = None) -> AsyncIterator[str]:
        """A control-plane GET answered as lines (NDJSON) for as long as the server sends
        them: each line as soon as it arrives, with no read timeout."""
        if not self.config.api_key:
            raise errors.AuthenticationError("no API key: pass api_key=... or set HUTCH_API_KEY")
        try:
            async with self._client.stream(
                    "GET", path, params=params, headers={"X-API-KEY": self.config.api_key},
                    timeout=_timeout(self.config.timeout(None), read=None)) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise _errors.from_api(response.status_code, response.content)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None


class AsyncAgent:
    """The agent inside one sandbox, reached through the server."""

    def __init__(self, transport: AsyncTransport, sandbox_id: str,
                 access_token: Optional[str] = None) -> None:
        self.transport = transport
        self.sandbox_id = sandbox_id
        self.headers = {
            "E2b-Sandbox-Id": sandbox_id,
            "E2b-Sandbox-Port": str(_wire.AGENT_PORT),
        }
        if access_token:
            self.headers["X-Access-Token"] = access_token

    @property
    def config(self) -> ConnectionConfig:
        return self.transport.config

    async def health(self, request_timeout: Optional[float] = None) -> Optional[bool]:
        """True when the agent answers, False when the sandbox is gone, None when unsure."""
        try:
            response = await self.transport.client.get(
                "/health", headers=self.headers,
                timeout=_timeout(self.config.timeout(request_timeout)),
            )
        except httpx.TransportError:
            return None
        if response.status_code < 300:
            return True
        if response.status_code == 502 and b"not found" in response.content:
            return False
        return None

    async def lost(self, exc: Exception) -> errors.HutchError:
        """Explain a dropped connection: the sandbox was killed, or the network failed."""
        if isinstance(exc, httpx.TimeoutException):
            return errors.TimeoutError_(f"the sandbox {self.sandbox_id} did not answer in time")
        if await self.health(request_timeout=5) is False:
            return errors.SandboxNotFoundError(
                f"the sandbox {self.sandbox_id} was killed or reached its end of life"
            )
        return errors.UnavailableError(f"lost the connection to sandbox {self.sandbox_id}: {exc!r}")

    def _rpc_headers(self, content_type: str, user: Optional[str],
                     timeout: Optional[float]) -> Dict[str, str]:
        return {
            **self.headers,
            "Content-Type": content_type,
            "Connect-Protocol-Version": "1",
            **_wire.user_header(user),
            **_wire.timeout_header(timeout),
        }

    async def unary(self, method: str, message: dict, *, user: Optional[str] = None,
                    request_timeout: Optional[float] = None,
                    not_found: Type[errors.HutchError] = errors.NotFoundError) -> dict:
        """A unary Connect call, e.g. ``unary("filesystem.Filesystem/Stat", {"path": p})``."""
        timeout = self.config.timeout(request_timeout)
        try:
            response = await self.transport.client.post(
                "/" + method, content=json.dumps(message).encode(),
                headers=self._rpc_headers("application/json", user, timeout),
                timeout=_timeout(timeout),
            )
        except httpx.TransportError as exc:
            raise await self.lost(exc) from None
        if response.status_code != 200:
            raise _errors.from_agent(response.status_code, response.content, not_found=not_found)
        return response.json() if response.content else {}

    async def stream(self, method: str, message: dict, *, user: Optional[str] = None,
                     timeout: Optional[float] = None, request_timeout: Optional[float] = None,
                     not_found: Type[errors.HutchError] = errors.NotFoundError) -> "AsyncEventStream":
        """Open a server-streaming Connect call; ``timeout`` bounds the whole call (0: none)."""
        headers = self._rpc_headers("application/connect+json", user, timeout)
        headers["Keepalive-Ping-Interval"] = str(_wire.KEEPALIVE_INTERVAL)
        request = self.transport.client.build_request(
            "POST", "/" + method, content=_wire.encode_envelope(message), headers=headers,
            timeout=_timeout(self.config.timeout(request_timeout), read=_wire.STREAM_READ_TIMEOUT),
        )
        try:
            response = await self.transport.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise await self.lost(exc) from None
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            raise _errors.from_agent(response.status_code, body, not_found=not_found)
        return AsyncEventStream(self, response, not_found,
                                start_timeout=self.config.timeout(request_timeout))


class AsyncEventStream:
    """The messages of one server stream; ends quietly, or raises the end-stream error."""

    def __init__(self, agent: AsyncAgent, response: httpx.Response,
                 not_found: Type[errors.HutchError],
                 start_timeout: Optional[float] = None) -> None:
        self._agent = agent
        self._start_timeout = start_timeout
        self._response = response
        self._not_found = not_found
        self.ended = False  # the end-stream message arrived
        self.messages = self._messages()

    def abort(self) -> None:
        _backend.abort_response(self._response)

    async def aclose(self) -> None:
        await self.messages.aclose()
        await self._response.aclose()

    async def _messages(self) -> AsyncIterator[dict]:
        decoder = _wire.EnvelopeDecoder()
        end = None
        try:
            async for chunk in self._response.aiter_raw():
                if end is not None:
                    continue
                for envelope in decoder.feed(chunk):
                    if envelope.end_stream:
                        end = envelope.json()
                        break
                    yield envelope.json()
            # The body is read to its end even after the end-stream message (only HTTP's own
            # end follows it): a response closed before that closes its connection too, and
            # every call would pay for a new one.
            if end is not None:
                self.ended = True
                error = _errors.from_end_stream(end, not_found=self._not_found)
                if error is not None:
                    raise error
                return
            # Connect always closes a stream with an end-stream message; a body that ends
            # without one was cut off (the sandbox died, a proxy gave up).
            raise await self._agent.lost(EOFError("the stream ended without its end message"))
        except httpx.TransportError as exc:
            raise await self._agent.lost(exc) from None
        except (_wire.EnvelopeError, ValueError) as exc:
            raise errors.SandboxError(f"malformed stream from the agent: {exc}") from None
        finally:
            await self._response.aclose()

    async def first(self) -> dict:
        """The first message (a stream always starts with a ``start`` event).

        Waiting for it is bounded by the request timeout, as in e2b; the stream itself is
        bounded by the call's own ``timeout``.
        """
        try:
            async with _backend.deadline(self._start_timeout, self.abort, "starting the stream"):
                return await anext(self.messages)
        except StopAsyncIteration:
            raise errors.SandboxError("the stream ended before it started") from None
