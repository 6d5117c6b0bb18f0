"""What the client commands share: connection options, KEY=VALUE parsing, error display."""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

import click

from hutch import errors

T = TypeVar("T")


class Context:
    """The connection options every client command shares."""

    def __init__(self, url: Optional[str], api_key: Optional[str]) -> None:
        self.url = url
        self.api_key = api_key

    @property
    def opts(self) -> Dict[str, Any]:
        return {"url": self.url, "api_key": self.api_key}


def _call(ctx: "Context", method: str, path: str, body: Optional[Dict[str, Any]] = None):
    """One call of hutch's own endpoints (keys, templates); errors as hutch errors."""
    import httpx

    from hutch.sdk._config import resolve
    from hutch.sdk._errors import from_api

    config = resolve(**ctx.opts)
    headers = {"X-API-KEY": config.api_key} if config.api_key else {}
    try:
        response = httpx.request(method, config.url + path, json=body, headers=headers,
                                 timeout=config.timeout(None))
    except httpx.HTTPError as exc:
        raise errors.UnavailableError(f"cannot reach {config.url}: {exc}") from None
    if response.status_code >= 400:
        raise from_api(response.status_code, response.content, not_found=errors.NotFoundError)
    return response


def api(ctx: "Context", method: str, path: str, body: Optional[Dict[str, Any]] = None) -> Any:
    """Its JSON answer (None when empty)."""
    response = _call(ctx, method, path, body)
    return response.json() if response.content else None


def api_text(ctx: "Context", path: str) -> str:
    """A GET answered as text."""
    return _call(ctx, "GET", path).text


def parse_pairs(values: Tuple[str, ...], what: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: expected KEY=VALUE", param_hint=what)
        out[key] = val
    return out


def run_guarded(fn: Callable[[], T]) -> T:
    """Turn hutch errors into a one-line message and exit status 1 (not a traceback)."""
    try:
        return fn()
    except errors.HutchError as exc:
        name = type(exc).__name__.rstrip("_")
        click.echo(f"error: {name}: {exc.message or exc}", err=True)
        sys.exit(1)



pass_ctx = click.make_pass_decorator(Context)
