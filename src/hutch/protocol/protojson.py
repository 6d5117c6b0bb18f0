"""proto3 canonical-JSON helpers, written for the few message shapes envd uses.

The rules that bite (and that these helpers encode once):

* ``bytes`` are standard base64 strings;
* 64-bit integers are decimal strings (``"12"``), though parsers accept numbers too;
* enums are names (``"FILE_TYPE_FILE"``) and parsers accept numbers too;
* fields at their default value (0, "", false, empty list/map) are omitted;
* field names are lowerCamelCase on output; parsers accept snake_case as well;
* ``google.protobuf.Timestamp`` is an RFC 3339 string in UTC.
"""

from __future__ import annotations

import base64
import re
import time as _time
from typing import Any, Dict, Mapping, Optional, Union

_SNAKE = re.compile(r"_([a-z0-9])")
_CAMEL = re.compile(r"([A-Z])")


def camel(name: str) -> str:
    """``exit_code`` -> ``exitCode``."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), name)


def snake(name: str) -> str:
    """``exitCode`` -> ``exit_code``."""
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), name)


def field(msg: Optional[Mapping[str, Any]], name: str, default: Any = None) -> Any:
    """Read field ``name`` (given in snake_case) from a parsed message, in either spelling.

    Absent fields and JSON ``null`` both give ``default``, as proto3 parsers do.
    """
    if not msg:
        return default
    value = msg.get(camel(name))
    if value is None:
        value = msg.get(name)
    return default if value is None else value


def b64encode(data: bytes) -> str:
    """Encode a ``bytes`` field."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Union[str, bytes, None]) -> bytes:
    """Decode a ``bytes`` field; accepts the URL-safe alphabet and missing padding as proto3 does."""
    if not text:
        return b""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def int64(value: int) -> str:
    """Encode an int64/uint64 field."""
    return str(int(value))


def parse_int(value: Any, default: int = 0) -> int:
    """Decode an integer field sent as a number or a decimal string."""
    if value is None or value == "":
        return default
    return int(value)


def enum_name(names: Mapping[int, str], value: Any, default: int = 0) -> str:
    """Encode an enum field: ``names`` maps numbers to names."""
    return names.get(int(value), names[default])


def parse_enum(names: Mapping[int, str], value: Any, default: int = 0) -> int:
    """Decode an enum field given as its name or its number; unknown names give ``default``."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    for number, name in names.items():
        if name == value:
            return number
    return default


def timestamp(seconds: float) -> str:
    """Encode a ``google.protobuf.Timestamp`` from a Unix time (float seconds), as RFC 3339 UTC."""
    return timestamp_ns(int(round(seconds * 1e9)))


def timestamp_ns(ns: int) -> str:
    """Encode a ``google.protobuf.Timestamp`` from integer nanoseconds (exact, e.g. st_mtime_ns).

    Uses 0, 3, 6 or 9 fractional digits, the fewest that keep the value exact, as proto3 does.
    """
    whole, nanos = divmod(int(ns), 1_000_000_000)
    base = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(whole))
    if nanos:
        frac = f"{nanos:09d}"
        for digits in (3, 6, 9):
            if frac[digits:] == "0" * (9 - digits):
                frac = frac[:digits]
                break
        base += "." + frac
    return base + "Z"


def parse_timestamp(text: str) -> float:
    """Decode an RFC 3339 timestamp to a Unix time."""
    import datetime as _dt

    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    frac = ""
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(.*)$", text)
    if match:
        text, frac = match.group(1) + match.group(3), match.group(2) or ""
    value = _dt.datetime.fromisoformat(text).timestamp()
    return value + (float(frac) if frac else 0.0)


def prune(message: Dict[str, Any]) -> Dict[str, Any]:
    """Drop fields holding proto3 default values (None, 0, "", False, empty), shallowly.

    Use it on messages whose zero values carry no meaning; keep explicitly-optional fields
    (e.g. ``symlinkTarget``) by adding them after pruning.
    """
    return {k: v for k, v in message.items() if v not in (None, 0, "", False, [], {}) or v is True}
