"""Running code in a sandbox's code interpreter (templates that have one, such as
``code-interpreter``): ``run_code``, its iterator form, and code contexts.

The calls go to port 49999 through the server, E2B's code-interpreter API: ``POST /execute``
answers with NDJSON lines (see ``hutch.sdk._execution``), the context calls with JSON.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Union

import httpx

from hutch import errors
from hutch.protocol.ndjson import NdjsonDecoder
from hutch.sdk import _errors
from hutch.sdk._async.transport import AsyncTransport, _timeout
from hutch.sdk._execution import (
    CODE_INTERPRETER_PORT,
    Context,
    Event,
    Execution,
    ExecutionError,
    OutputMessage,
    Result,
    apply,
    execute_body,
)

#: How much longer than the execution's own timeout the client waits for the answer (the
#: server interrupts the code at the timeout and then reports it).
TIMEOUT_SLACK = 30.0

Handler = Optional[Callable[[Any], Any]]


class AsyncCodeInterpreter:
    def __init__(self, transport: AsyncTransport, sandbox_id: str,
                 access_token: Optional[str], traffic_token: Optional[str],
                 lost: Callable[[Exception], Any]) -> None:
        self.transport = transport
        self.sandbox_id = sandbox_id
        self.headers = {"E2b-Sandbox-Id": sandbox_id,
                        "E2b-Sandbox-Port": str(CODE_INTERPRETER_PORT)}
        if access_token:
            self.headers["X-Access-Token"] = access_token
        if traffic_token:
            self.headers["E2B-Traffic-Access-Token"] = traffic_token
        self._lost = lost

    async def run_code(self, code: str, language: Optional[str] = None,
                       context: Optional[Union[Context, str]] = None, *,
                       on_stdout: Handler = None, on_stderr: Handler = None,
                       on_result: Handler = None, on_error: Handler = None,
                       envs: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                       request_timeout: Optional[float] = None) -> Execution:
        execution = Execution()
        async for event in self._events(code, language, context, envs, timeout,
                                        request_timeout, execution):
            if isinstance(event, OutputMessage):
                handler = on_stderr if event.error else on_stdout
            elif isinstance(event, Result):
                handler = on_result
            else:
                handler = on_error
            if handler is not None:
                outcome = handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
        return execution

    async def run_code_stream(self, code: str, language: Optional[str] = None,
                              context: Optional[Union[Context, str]] = None, *,
                              envs: Optional[Dict[str, str]] = None,
                              timeout: Optional[float] = None,
                              request_timeout: Optional[float] = None,
                              ) -> AsyncIterator[Event]:
        async for event in self._events(code, language, context, envs, timeout,
                                        request_timeout, Execution()):
            yield event

    async def _events(self, code, language, context, envs, timeout, request_timeout,
                      execution: Execution) -> AsyncIterator[Event]:
        body = execute_body(code, language, context, envs, timeout)
        read = None if not timeout else timeout + TIMEOUT_SLACK
        request = self.transport.client.build_request(
            "POST", "/execute", content=json.dumps(body).encode(),
            headers={**self.headers, "Content-Type": "application/json"},
            timeout=_timeout(self.transport.config.timeout(request_timeout), read=read))
        try:
            response = await self.transport.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise await self._lost(exc) from None
        try:
            if response.status_code != 200:
                raise _error(response.status_code, await response.aread(), context)
            decoder = NdjsonDecoder()
            try:
                async for chunk in response.aiter_raw():
                    for line in decoder.feed(chunk):
                        event = apply(execution, line)
                        if event is not None:
                            yield event
            except httpx.TransportError as exc:
                raise await self._lost(exc) from None
        finally:
            await response.aclose()

    # -- contexts ----------------------------------------------------------------------------

    async def create_code_context(self, cwd: Optional[str] = None,
                                  language: Optional[str] = None,
                                  request_timeout: Optional[float] = None) -> Context:
        body: Dict[str, Any] = {}
        if cwd is not None:
            body["cwd"] = cwd
        if language is not None:
            body["language"] = language
        data = await self._call("POST", "/contexts", body, request_timeout)
        return Context.from_wire(data)

    async def list_code_contexts(self, request_timeout: Optional[float] = None) -> List[Context]:
        data = await self._call("GET", "/contexts", None, request_timeout)
        return [Context.from_wire(c) for c in data]

    async def restart_code_context(self, context: Union[Context, str],
                                   request_timeout: Optional[float] = None) -> None:
        await self._call("POST", f"/contexts/{_id(context)}/restart", None, request_timeout,
                         context=context)

    async def remove_code_context(self, context: Union[Context, str],
                                  request_timeout: Optional[float] = None) -> None:
        await self._call("DELETE", f"/contexts/{_id(context)}", None, request_timeout,
                         context=context)

    async def _call(self, method: str, path: str, body: Optional[dict],
                    request_timeout: Optional[float], context: Any = None) -> Any:
        headers = dict(self.headers)
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            response = await self.transport.client.request(
                method, path, content=content, headers=headers,
                timeout=_timeout(self.transport.config.timeout(request_timeout)))
        except httpx.TransportError as exc:
            raise await self._lost(exc) from None
        if response.status_code >= 300:
            raise _error(response.status_code, response.content, context)
        return response.json() if response.content else None


def _id(context: Union[Context, str]) -> str:
    return context.id if isinstance(context, Context) else str(context)


def _error(status: int, body: bytes, context: Any) -> errors.HutchError:
    if status == 404 and b"no route" not in body:
        return _errors.from_agent(status, body, not_found=errors.NotFoundError)
    if status == 502 and b"port is not open" in body:
        return errors.SandboxError(
            "this sandbox has no code interpreter (create it from the 'code-interpreter' "
            "template)", status=502)
    return _errors.from_agent(status, body)


__all__ = ["AsyncCodeInterpreter", "Context", "Execution", "ExecutionError", "OutputMessage",
           "Result"]
