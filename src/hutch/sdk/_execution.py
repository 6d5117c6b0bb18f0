"""What running code hands back: ``Execution`` and its parts, E2B's shapes.

An execution arrives as NDJSON lines (``hutch.protocol.ndjson``); :func:`apply` folds one line
into an :class:`Execution` and returns the event it carried, so the blocking call, the
callbacks and the iterator form all read the stream the same way.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from hutch.errors import InvalidArgumentError

CODE_INTERPRETER_PORT = 49999

#: The formats a result may carry, in the order ``formats()`` lists them.
FORMATS = ("text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex", "json",
           "javascript", "data", "chart")
_BINARY = {"png": ".png", "jpeg": ".jpg", "pdf": ".pdf"}
_TEXT = {"text": ".txt", "html": ".html", "markdown": ".md", "svg": ".svg", "latex": ".tex",
         "javascript": ".js"}


@dataclass
class OutputMessage:
    """One chunk of stdout (``error`` False) or stderr (``error`` True)."""

    line: str
    timestamp: int
    error: bool = False

    def __str__(self) -> str:
        return self.line


@dataclass
class ExecutionError:
    """An exception raised by the code (never by the request): name, message, traceback."""

    name: str
    value: str
    traceback: str

    def to_json(self) -> Dict[str, str]:
        return {"name": self.name, "value": self.value, "traceback": self.traceback}


class Chart:
    """A matplotlib figure described as data: ``type`` (line, scatter, bar, pie,
    box_and_whisker, superchart, unknown), ``title``, ``elements`` and, for 2-D charts,
    ``x_label``, ``y_label``, ticks and scales. Any field of the document is an attribute."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self._data = dict(data)
        elements = data.get("elements") or []
        if data.get("type") == "superchart":
            elements = [Chart(e) for e in elements]
        self.elements: List[Any] = elements

    @property
    def type(self) -> str:
        return self._data.get("type") or "unknown"

    @property
    def title(self) -> Optional[str]:
        return self._data.get("title")

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._data)

    def __repr__(self) -> str:
        return f"Chart(type={self.type!r}, title={self.title!r}, elements={len(self.elements)})"


class Result:
    """One output of the code: the value of its last line (``is_main_result``) or something
    it displayed. Each format is an attribute (None when absent); images are base64."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.is_main_result: bool = bool(data.get("is_main_result", False))
        self.text: Optional[str] = data.get("text")
        self.html: Optional[str] = data.get("html")
        self.markdown: Optional[str] = data.get("markdown")
        self.svg: Optional[str] = data.get("svg")
        self.png: Optional[str] = data.get("png")
        self.jpeg: Optional[str] = data.get("jpeg")
        self.pdf: Optional[str] = data.get("pdf")
        self.latex: Optional[str] = data.get("latex")
        self.json: Optional[Any] = data.get("json")
        self.javascript: Optional[str] = data.get("javascript")
        self.data: Optional[Dict[str, Any]] = data.get("data")
        chart = data.get("chart")
        self.chart: Optional[Chart] = Chart(chart) if isinstance(chart, dict) else None
        self.extra: Optional[Dict[str, Any]] = data.get("extra")

    def formats(self) -> List[str]:
        """The formats present, e.g. ``["text", "png", "chart"]``."""
        out = [f for f in FORMATS if getattr(self, f) is not None]
        return out + sorted(self.extra or {})

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def save(self, path: Union[str, Path], format: Optional[str] = None) -> Path:
        """Write one format to a file (images decoded from base64); by default the richest
        of png, jpeg, pdf, svg, html, text that the result has."""
        if format is None:
            format = next((f for f in ("png", "jpeg", "pdf", "svg", "html", "markdown",
                                       "latex", "text") if getattr(self, f) is not None), None)
            if format is None:
                raise ValueError("this result has nothing to save")
        value = getattr(self, format, None)
        if value is None:
            raise ValueError(f"this result has no {format!r} (it has {self.formats()})")
        path = Path(path)
        if format in _BINARY:
            path.write_bytes(base64.b64decode(value))
        else:
            path.write_text(value if isinstance(value, str) else str(value))
        return path

    @staticmethod
    def suffix(format: str) -> str:
        """The file suffix for a format (``.png`` for png)."""
        return _BINARY.get(format) or _TEXT.get(format) or ".json"

    # Rendering in notebooks, as the kernel sent it.
    def _repr_html_(self) -> Optional[str]:
        return self.html

    def _repr_png_(self) -> Optional[str]:
        return self.png

    def _repr_markdown_(self) -> Optional[str]:
        return self.markdown

    def __str__(self) -> str:
        return self.text or ""

    def __repr__(self) -> str:
        return f"Result({self.text if self.text is not None else self.formats()!r})"


@dataclass
class Logs:
    stdout: List[str] = field(default_factory=list)
    stderr: List[str] = field(default_factory=list)


@dataclass
class Execution:
    """Everything one ``run_code`` produced."""

    results: List[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: Optional[ExecutionError] = None
    execution_count: Optional[int] = None

    @property
    def text(self) -> Optional[str]:
        """The text of the main result (the value of the code's last line), if any."""
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None

    def to_json(self) -> Dict[str, Any]:
        return {"results": [r.formats() for r in self.results],
                "logs": {"stdout": self.logs.stdout, "stderr": self.logs.stderr},
                "error": self.error.to_json() if self.error else None,
                "execution_count": self.execution_count}


@dataclass
class Context:
    """A code context: its own kernel, language, working directory and state."""

    id: str
    language: str
    cwd: str

    @classmethod
    def from_wire(cls, data: Dict[str, Any]) -> "Context":
        return cls(id=data["id"], language=data.get("language", "python"),
                   cwd=data.get("cwd", "/home/user"))


Event = Union[OutputMessage, Result, ExecutionError]


def apply(execution: Execution, line: Dict[str, Any]) -> Optional[Event]:
    """Fold one stream line into ``execution``; return the event it carried (None for
    bookkeeping lines: execution count, end of execution, keepalives, unknown types)."""
    kind = line.get("type")
    if kind == "stdout" or kind == "stderr":
        text = line.get("text", "")
        (execution.logs.stdout if kind == "stdout" else execution.logs.stderr).append(text)
        return OutputMessage(text, line.get("timestamp", 0), kind == "stderr")
    if kind == "result":
        result = Result(line)
        execution.results.append(result)
        return result
    if kind == "error":
        execution.error = ExecutionError(line.get("name", ""), line.get("value", ""),
                                         line.get("traceback", ""))
        return execution.error
    if kind == "number_of_executions":
        execution.execution_count = line.get("execution_count")
    return None


def execute_body(code: str, language: Optional[str], context: Optional[Any],
                 envs: Optional[Dict[str, str]], timeout: Optional[float]) -> Dict[str, Any]:
    """The ``/execute`` request; ``context`` is a Context or its id."""
    if not isinstance(code, str):
        raise TypeError("code must be a string")
    if context is not None and language is not None:
        raise InvalidArgumentError("give language or context, not both")
    body: Dict[str, Any] = {"code": code}
    if context is not None:
        body["context_id"] = context.id if isinstance(context, Context) else str(context)
    if language is not None:
        body["language"] = language
    if envs:
        body["env_vars"] = dict(envs)
    if timeout:
        body["timeout"] = timeout
    return body

