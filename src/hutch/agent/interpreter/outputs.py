"""Jupyter messages -> the lines of E2B's ``/execute`` stream. Pure functions, no I/O.

A kernel reports what a cell does on its IOPub channel: ``stream`` (stdout/stderr text),
``execute_input`` (the cell was accepted and numbered), ``execute_result`` (the cell's value),
``display_data`` (each ``display()``, each ``plt.show()``), ``error`` (an exception). Each maps
to one line of the NDJSON stream the E2B code-interpreter SDK parses (``type`` selects the
case; the SDK ignores types it does not know).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

#: MIME type -> the ``result`` field E2B's SDK reads it from.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "text/javascript": "javascript",
    # Formats the kernel start-up registers (see ``kernel_startup``): a DataFrame as columns,
    # a matplotlib figure described as data.
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def _now_ns() -> int:
    return time.time_ns()


def stream(name: str, text: str) -> Dict[str, Any]:
    """A chunk of stdout or stderr (``name`` is the Jupyter stream name)."""
    return {"type": "stderr" if name == "stderr" else "stdout", "text": text,
            "timestamp": _now_ns()}


def result(data: Dict[str, Any], is_main: bool) -> Dict[str, Any]:
    """A MIME bundle as a ``result`` line: known types in their fields, the rest in ``extra``."""
    out: Dict[str, Any] = {"type": "result", "is_main_result": is_main}
    extra: Dict[str, Any] = {}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        elif field not in out:
            out[field] = value.strip() if field in ("png", "jpeg", "pdf") and isinstance(value, str) else value
    if extra:
        out["extra"] = extra
    return out


def error(name: str, value: str, traceback: Any) -> Dict[str, Any]:
    if isinstance(traceback, (list, tuple)):
        traceback = "\n".join(str(line) for line in traceback)
    return {"type": "error", "name": name, "value": value, "traceback": traceback or ""}


def translate(msg: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The stream line for one IOPub message, or None for messages that carry nothing for the
    client (status, clear_output, comm traffic)."""
    kind = msg.get("msg_type") or msg.get("header", {}).get("msg_type")
    content = msg.get("content", {})
    if kind == "stream":
        return stream(content.get("name", "stdout"), content.get("text", ""))
    if kind == "execute_input":
        return {"type": "number_of_executions", "execution_count": content.get("execution_count")}
    if kind == "execute_result":
        return result(content.get("data", {}), True)
    if kind == "display_data":
        return result(content.get("data", {}), False)
    if kind == "error":
        return error(content.get("ename", "Error"), content.get("evalue", ""),
                     content.get("traceback", []))
    return None


END = {"type": "end_of_execution"}
