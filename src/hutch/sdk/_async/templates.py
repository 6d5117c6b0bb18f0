"""Building a template on the server: upload what its steps copy, stream the build.

The server builds each step in a build sandbox and caches it as a layer, so building an
unchanged template again is quick; events arrive as they happen (each step, each line of its
output) and the call returns the template's description, or raises ``TemplateError`` with the
failing step, its output and its exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import httpx

from hutch import errors
from hutch.protocol.template import Definition
from hutch.sdk import _config, _context, _errors
from hutch.sdk._async import _backend
from hutch.sdk._async.transport import AsyncTransport, _timeout


async def build_template(definition: Definition, name: str, *,
                         context_dir: Optional[Path] = None,
                         on_log: Optional[Callable[[str], Any]] = None,
                         on_step: Optional[Callable[[Dict[str, Any]], Any]] = None,
                         api_key: Optional[str] = None, url: Optional[str] = None,
                         request_timeout: Optional[float] = None) -> Dict[str, Any]:
    definition.check()
    archive = _context.pack(definition, Path(context_dir or "."))
    config = _config.resolve(url, api_key, request_timeout)
    if not config.api_key:
        raise errors.AuthenticationError("no API key: pass api_key=... or set HUTCH_API_KEY")
    headers = {"X-API-KEY": config.api_key}
    async with AsyncTransport(config) as transport:
        body: Dict[str, Any] = {"name": name, "definition": definition.to_json()}
        finished = False
        try:
            if archive is not None:
                uploaded = await transport.client.post(
                    "/templates/contexts", content=archive,
                    headers={**headers, "Content-Type": "application/octet-stream"},
                    timeout=_timeout(config.timeout(request_timeout)))
                if uploaded.status_code >= 300:
                    raise _errors.from_api(uploaded.status_code, uploaded.content,
                                           not_found=errors.NotFoundError)
                body["context"] = uploaded.json()["context"]
            async with transport.client.stream(
                    "POST", "/templates", json=body, headers=headers,
                    timeout=_timeout(config.timeout(request_timeout), read=None)) as response:
                if response.status_code >= 300:
                    await response.aread()
                    raise _errors.from_api(response.status_code, response.content,
                                           not_found=errors.NotFoundError)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event["type"] == "log":
                        await _backend.call(on_log, event["text"])
                    elif event["type"] == "step":
                        await _backend.call(on_step, event)
                    elif event["type"] == "error":
                        raise errors.TemplateError(event["message"])
                    elif event["type"] == "done":
                        finished = True
        except httpx.TransportError as exc:
            raise transport.unreachable(exc) from None
        if not finished:
            raise errors.TemplateError(f"the build of {name} ended without a result")
        described = await transport.api("GET", f"/templates/{name}",
                                         not_found=errors.NotFoundError)
        return dict(described.json())
