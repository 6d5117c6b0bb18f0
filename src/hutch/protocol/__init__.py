"""The wire contract as data: Connect-RPC envelopes, error codes, proto3-JSON helpers, the
envd-compatible message shapes and NDJSON lines. No I/O; stdlib only, so the in-sandbox agent
(and any Python >= 3.9) can import it.

Modules: :mod:`.envelope` (5-byte Connect framing), :mod:`.codes` (Connect code <-> HTTP
status), :mod:`.protojson` (proto3 JSON rules), :mod:`.envd` (envd paths, enums, message
builders, ``ENVD_VERSION``), :mod:`.ndjson` (line framing of ``/execute``).
"""

from .codes import CODE_TO_STATUS, code_for_status, error_body, status_for_code
from .envd import ENVD_VERSION
from .envelope import (
    FLAG_COMPRESSED,
    FLAG_END_STREAM,
    Envelope,
    EnvelopeDecoder,
    EnvelopeError,
    encode_end_stream,
    encode_envelope,
    end_stream_message,
)

__all__ = [
    "CODE_TO_STATUS",
    "ENVD_VERSION",
    "FLAG_COMPRESSED",
    "FLAG_END_STREAM",
    "Envelope",
    "EnvelopeDecoder",
    "EnvelopeError",
    "code_for_status",
    "encode_end_stream",
    "encode_envelope",
    "end_stream_message",
    "error_body",
    "status_for_code",
]
