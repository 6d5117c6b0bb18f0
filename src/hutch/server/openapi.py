"""The HTTP API as an OpenAPI 3.1 document: every control-plane route, plus the data plane.

The document is data kept next to :mod:`hutch.server.routes` rather than derived from it: the
endpoints parse their bodies by hand (E2B's shapes, E2B's leniencies), so there is nothing to
introspect. Drift is caught instead: a test checks that the routes the Starlette app serves and
the operations listed here are the same set, and ``scripts/gen_docs.py --check`` that
``spec/openapi.json`` is this document. The server also serves it at ``GET /openapi.json``.

Shapes follow what the endpoints return (see ``ControlPlane.sandbox``/``listed``/``detail``).
"""

from __future__ import annotations

import copy
from typing import Any

from hutch.server.proxy import AGENT_PORT

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _obj(props: dict, required: list[str] | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    out.update(extra)
    return out


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TIME = {"type": "string", "format": "date-time"}
_ID = {"type": "string", "pattern": "^[a-z0-9]{20}$",
       "description": "A sandbox id; anything else is answered 400."}

SCHEMAS: dict[str, dict] = {
    "Error": _obj({
        "code": {"type": "integer", "description": "The HTTP status, repeated."},
        "message": {"type": "string"},
        "endReason": {"type": ["string", "null"], "description": (
            "GET /sandboxes/{sandboxID} of a sandbox that has ended: why (`killed`, "
            "`timeout`, `not found at server start`, `server stopped during create`, ...).")},
        "endedAt": {"type": ["string", "null"], "format": "date-time",
                    "description": "With endReason: when it ended."},
    }, ["code", "message"], description="The body of every answer that is not a success."),
    "NewSandbox": _obj({
        "templateID": {"type": "string", "description": "The template to start (`base`, "
                                                         "`code-interpreter`, ...)."},
        "timeout": {"type": "number", "minimum": 0, "description": (
            "Seconds the sandbox lives before it is killed (default HUTCH_DEFAULT_TIMEOUT, "
            "at most HUTCH_MAX_TIMEOUT).")},
        "metadata": {**_STR_MAP, "description": "Kept with the sandbox; filters lists."},
        "envVars": {**_STR_MAP, "description": "Environment of every command run inside."},
        "allow_internet_access": {"type": "boolean", "default": True, "description": (
            "false: what `network.allowOut` does not name is unreachable; with no "
            "`allowOut` the sandbox has no network at all (no ports to forward either). "
            "`allowInternetAccess` is accepted too.")},
        "network": _ref("Network"),
        "secure": {"type": "boolean", "default": True, "description": (
            "false: no access token is issued and the sandbox id alone reaches its agent.")},
        "cpuCount": {"type": "number", "exclusiveMinimum": 0, "description": (
            "hutch extra: CPUs (fractions allowed), at most HUTCH_MAX_CPU.")},
        "memoryMB": {"type": "integer", "exclusiveMinimum": 0, "description": (
            "hutch extra: memory limit in MiB, at most HUTCH_MAX_MEMORY_MB.")},
        "diskSizeMB": {"type": "integer", "exclusiveMinimum": 0, "description": (
            "hutch extra: writable disk quota in MiB, at most HUTCH_MAX_DISK_MB.")},
    }, ["templateID"]),
    "Sandbox": _obj({
        "templateID": {"type": "string"},
        "sandboxID": _ID,
        "clientID": {"type": "string", "description": "The server's instance name."},
        "envdVersion": {"type": "string", "description": (
            "The E2B agent protocol version the in-sandbox agent implements.")},
        "envdAccessToken": {"type": ["string", "null"], "description": (
            "Send as X-Access-Token on data-plane requests to the agent; null for a sandbox "
            "created with `secure: false`.")},
        "trafficAccessToken": {"type": ["string", "null"], "description": (
            "Send as E2B-Traffic-Access-Token on the code interpreter's context calls (port "
            "49999), which E2B's code-interpreter SDK makes without the access token; null "
            "when envdAccessToken is.")},
        "alias": {"type": "string"},
        "domain": {"type": ["string", "null"], "description": "HUTCH_DOMAIN when host routing is on: ports are reached at <port>-<sandboxID>.<domain>"},
    }, ["templateID", "sandboxID", "clientID", "envdVersion"]),
    "ListedSandbox": _obj({
        "templateID": {"type": "string"},
        "sandboxID": _ID,
        "clientID": {"type": "string"},
        "alias": {"type": "string"},
        "startedAt": _TIME,
        "endAt": {**_TIME, "description": "When the sandbox's timeout kills it."},
        "envdVersion": {"type": "string"},
        "cpuCount": {"type": "integer"},
        "memoryMB": {"type": "integer"},
        "diskSizeMB": {"type": "integer"},
        "state": {"type": "string", "enum": ["running", "paused"]},
        "metadata": _STR_MAP,
    }, ["templateID", "sandboxID", "clientID", "startedAt", "endAt", "envdVersion",
        "cpuCount", "memoryMB", "diskSizeMB", "state", "metadata"]),
    "SandboxDetail": {"allOf": [_ref("ListedSandbox"), _obj({
        "envdAccessToken": {"type": ["string", "null"]},
        "trafficAccessToken": {"type": ["string", "null"]},
        "domain": {"type": ["string", "null"], "description": "HUTCH_DOMAIN when host routing is on: ports are reached at <port>-<sandboxID>.<domain>"},
        "allowInternetAccess": {"type": "boolean"},
        "network": _ref("Network"),
    }, ["allowInternetAccess", "network"])]},
    "SandboxMetric": _obj({
        "timestamp": _TIME,
        "timestampUnix": {"type": "integer"},
        "cpuCount": {"type": "integer"},
        "cpuUsedPct": {"type": "number", "description": "Since the previous metrics call."},
        "memUsed": {"type": "integer", "description": "Bytes."},
        "memTotal": {"type": "integer", "description": "Bytes."},
        "memCache": {"type": "integer", "description": "Bytes."},
        "diskUsed": {"type": "integer", "description": "Bytes."},
        "diskTotal": {"type": "integer", "description": "Bytes."},
        "oomKills": {"type": "integer", "description": (
            "hutch extra: processes the kernel's OOM killer killed in the sandbox since it "
            "started, because it reached its memory limit (its memory cgroup's oom_kill).")},
    }, ["timestamp", "timestampUnix", "cpuCount", "cpuUsedPct", "memUsed", "memTotal",
        "diskUsed", "diskTotal"]),
    "Network": _obj({
        "allowOut": {"type": "array", "items": {"type": "string"}, "description": (
            "IPv4 addresses, CIDR blocks and domain names (`*.example.com` too) the sandbox "
            "may reach, whatever denyOut and allow_internet_access say (never private "
            "ranges, cloud metadata or the host).")},
        "denyOut": {"type": "array", "items": {"type": "string"}, "description": (
            "IPv4 addresses, CIDR blocks and domain names it may not reach (`0.0.0.0/0`: "
            "everything allowOut does not name).")},
        "allowPublicTraffic": {"type": "boolean", "default": True, "description": (
            "false: the sandbox's ports answer only requests carrying its trafficAccessToken "
            "as E2B-Traffic-Access-Token.")},
    }, description="What a sandbox may reach (E2B's shape; other E2B fields are refused "
                   "with 400)."),
    "NetworkUpdate": _obj({
        "allowOut": {"type": "array", "items": {"type": "string"}},
        "denyOut": {"type": "array", "items": {"type": "string"}},
        "allow_internet_access": {"type": "boolean", "default": True},
    }, description="Replaces the egress configuration; fields left out are cleared."),
    "EgressEvent": _obj({
        "time": {"type": "number", "description": "Unix time, seconds."},
        "sandbox_id": _ID,
        "kind": {"type": "string", "enum": ["dns", "connection", "closed"], "description": (
            "dns: a resolver answer; connection: a connection opened or refused; closed: "
            "a connection ended, with its size.")},
        "name": {"type": ["string", "null"], "description": (
            "The name queried, or for a connection the name the sandbox's resolver last "
            "answered with its address.")},
        "addresses": {"type": "array", "items": {"type": "string"},
                      "description": "dns: the IPv4 addresses answered."},
        "address": {"type": "string", "description": "connection: the destination."},
        "port": {"type": ["integer", "null"]},
        "protocol": {"type": "string"},
        "allowed": {"type": "boolean"},
        "reason": {"type": "string"},
        "via": {"type": "string", "const": "proxy", "description": (
            "Judged by the egress proxy by the name it asked for (HTTP Host, TLS server "
            "name), for sandboxes whose policy has domain rules.")},
        "dialled": {"type": ["string", "null"], "description": (
            "proxy: the address the proxy connected to (the name's, whatever the sandbox "
            "dialled).")},
        "bytes_out": {"type": "integer", "description": "closed: bytes the sandbox sent."},
        "bytes_in": {"type": "integer", "description": "closed: bytes it received."},
    }, ["time", "sandbox_id", "kind", "allowed", "reason"]),
    "AuditEvent": _obj({
        "seq": {"type": "integer", "description": (
            "The event's place in the trail (increasing); pass the last one seen as `after` "
            "to read on from there.")},
        "time": {"type": "number", "description": "Unix time, seconds."},
        "kind": {"type": "string", "enum": ["api", "lifecycle", "process", "pty", "file",
                                            "dns", "connection", "closed"]},
        "sandbox_id": _ID,
        "key_id": {"type": "string", "description": "api: the calling key's id."},
        "method": {"type": "string", "description": "api: the HTTP method."},
        "path": {"type": ["string", "null"], "description": (
            "api: the route template (`/sandboxes/{id}`); file: the file's path.")},
        "status": {"type": ["integer", "null"], "description": "api, file: the HTTP status."},
        "duration_ms": {"type": "number", "description": "api, process, pty."},
        "event": {"type": "string", "description": (
            "lifecycle: created, killed, expired, timeout_changed, network_updated, adopted, "
            "stopped, oom, lost, error.")},
        "reason": {"type": "string"},
        "by": {"type": ["string", "null"], "description": (
            "lifecycle: the id of the key that asked for the change.")},
        "phase": {"type": "string", "enum": ["start", "end"],
                  "description": "process, pty: started (with its pid), or ended."},
        "argv": {"type": "array", "items": {"type": "string"}},
        "cwd": {"type": ["string", "null"]},
        "user": {"type": "string"},
        "env": {"type": "array", "items": {"type": "string"}, "description": (
            "The names of the env vars the call set (never their values).")},
        "pid": {"type": ["integer", "null"]},
        "exit_code": {"type": "integer"},
        "signal": {"type": "string"},
        "detached": {"type": "boolean", "description": (
            "The stream was cut before the process ended (it may run on, unobserved).")},
        "stdout_bytes": {"type": "integer"}, "stderr_bytes": {"type": "integer"},
        "stdout_head": {"type": "string", "description": "The first 4 KiB of stdout."},
        "stderr_head": {"type": "string", "description": "The first 4 KiB of stderr."},
        "op": {"type": "string", "enum": ["read", "write"], "description": "file."},
        "size": {"type": "integer", "description": "file: the bytes that passed."},
    }, ["seq", "time", "kind"], description=(
        "One event of the audit trail; which fields are present depends on the kind "
        "(dns, connection and closed are `EgressEvent`s).")),
    "Timeout": _obj({"timeout": {"type": "number", "minimum": 0,
                                 "description": "Seconds from now."}}, ["timeout"]),
    "Connect": _obj({"timeout": {"type": "number", "minimum": 0, "description": (
        "Seconds from now; extends the sandbox's life, never shortens it.")}}),
    "Health": _obj({
        "status": {"type": "string", "const": "ok"},
        "pools": {"type": "array", "description": (
            "The warm pools (HUTCH_POOL), when any is configured."), "items": _obj({
                "template": {"type": "string"},
                "size": {"type": "integer", "description": "Sandboxes kept ready."},
                "ready": {"type": "integer"},
                "starting": {"type": "integer", "description": "Being started to refill."},
                "hits": {"type": "integer", "description": "Creates served from the pool."},
                "misses": {"type": "integer", "description": (
                    "Creates the pool could have served but had none ready (started cold).")},
                "refills": {"type": "integer"},
                "refill_seconds_sum": {"type": "number", "description": (
                    "Summed refill lag: from a sandbox taken to its replacement ready.")},
                "last_refill_seconds": {"type": ["number", "null"]},
            })},
        "degraded": {"type": "array", "items": {"type": "string"}, "description": (
            "The isolation self-test checks that failed, when the server serves anyway "
            "(HUTCH_ALLOW_DEGRADED); absent when every check passed.")},
    }, ["status"]),
    "Quotas": _obj({
        "max_sandboxes": {"type": "integer", "minimum": 0,
                          "description": "Sandboxes alive at once."},
        "max_cpu": {"type": "number", "minimum": 0,
                    "description": "CPU cores summed over the key's live sandboxes."},
        "max_memory_mb": {"type": "integer", "minimum": 0,
                          "description": "Memory (MiB) summed over the key's live sandboxes."},
        "creates_per_minute": {"type": "integer", "minimum": 0,
                               "description": "Creates admitted in any 60 seconds."},
    }, ["max_sandboxes", "max_cpu", "max_memory_mb", "creates_per_minute"],
        type=["object", "null"],
        description="The tenant quotas in force for a key (0: no limit); null for the admin "
                    "key, which is exempt."),
    "QuotaOverrides": _obj({
        "max_sandboxes": {"type": ["integer", "null"], "minimum": 0},
        "max_cpu": {"type": ["number", "null"], "minimum": 0},
        "max_memory_mb": {"type": ["integer", "null"], "minimum": 0},
        "creates_per_minute": {"type": ["integer", "null"], "minimum": 0},
    }, description="The key's own limits (0: no limit); a field left out keeps its value, "
                   "null returns it to the server's HUTCH_TENANT_* default."),
    "SnapshotInfo": _obj({"snapshotID": {"type": "string"},
                          "names": {"type": "array", "items": {"type": "string"}}},
                         ["snapshotID", "names"]),
    "TemplateStep": _obj({
        "kind": {"type": "string", "enum": ["apt", "pip", "npm", "run", "copy", "add", "env",
                                            "workdir", "user"]},
        "args": {"type": "array", "items": {"type": "string"}, "description": (
            "apt/pip/npm: packages; run: the command; copy/add: sources then the "
            "destination; env: name, value; workdir: path; user: name[:group].")},
        "options": {**_STR_MAP, "description": "copy/add: chown, chmod (octal)."},
        "env": {**_STR_MAP, "description": "run: variables for this command only."},
    }, ["kind", "args"]),
    "TemplateDefinition": _obj({
        "base": {"type": "string", "description": "A built-in template or one of yours."},
        "steps": {"type": "array", "items": _ref("TemplateStep")},
        "start_cmd": {"type": "string"}, "ready_cmd": {"type": "string"},
        "labels": _STR_MAP, "cpu": {"type": "number", "exclusiveMinimum": 0},
        "memory_mb": {"type": "integer", "exclusiveMinimum": 0},
    }, ["base"], description="What `Template(...)` and a Dockerfile describe "
                             "(docs/templates.md)."),
    "TemplateBuild": _obj({
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
        "definition": _ref("TemplateDefinition"),
        "context": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": (
            "What `POST /templates/contexts` answered, when the steps copy files.")},
    }, ["name", "definition"]),
    "TemplateInfo": _obj({
        "templateID": {"type": "string"}, "builtin": {"type": "boolean"},
        "base": {"type": "string"}, "env": _STR_MAP, "user": {"type": "string"},
        "workdir": {"type": "string"}, "startCmd": {"type": ["string", "null"]},
        "readyCmd": {"type": ["string", "null"]}, "layers": {"type": "integer"},
        "builtAt": {"type": "number"}, "definition": _ref("TemplateDefinition"),
    }, ["templateID", "builtin"]),
    "NewKey": _obj({"name": {"type": "string", "maxLength": 100},
                    "quotas": _ref("QuotaOverrides")}),
    "KeyChange": _obj({"quotas": _ref("QuotaOverrides")}),
    "Key": _obj({
        "id": {"type": "string"},
        "name": {"type": "string"},
        "createdAt": _TIME,
        "revokedAt": {"type": ["string", "null"], "format": "date-time"},
        "admin": {"type": "boolean"},
        "quotas": _ref("Quotas"),
    }, ["id", "name", "createdAt", "revokedAt", "admin", "quotas"]),
    "CreatedKey": {"allOf": [_ref("Key"), _obj({"key": {
        "type": "string", "pattern": "^e2b_[0-9a-f]{40}$",
        "description": "The key itself: in this answer only (the server keeps its hash)."}},
        ["key"])]},
}


def _json(schema: dict) -> dict:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return {"description": description, **_json(_ref("Error"))}


def _ok(status: int, description: str, schema: dict | None = None,
        headers: dict | None = None, stream: dict | None = None) -> dict:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out.update(_json(schema))
    if stream:
        out.setdefault("content", {}).update(stream)
    if headers:
        out["headers"] = headers
    return {str(status): out}


_SANDBOX_ID = {"name": "id", "in": "path", "required": True, "schema": _ID}
_KEY_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_TEMPLATE_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_NOT_FOUND = {"404": _error("No such sandbox, or it belongs to another API key (the two are "
                            "answered alike).")}
_BAD = {"400": _error("A malformed id or body, or a value out of range.")}
_ADMIN = {"403": _error("Not the admin key.")}
_AUDIT_QUERY = [
    {"name": "kind", "in": "query", "schema": {"type": "string"}, "description": (
        "Only these kinds, comma-separated (api, lifecycle, process, pty, file, dns, "
        "connection, closed); the parameter may repeat.")},
    {"name": "since", "in": "query", "schema": {"type": "string"}, "description": (
        "Only events at or after this time: Unix seconds or RFC 3339.")},
    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0},
     "description": "Only events after this `seq`."},
    {"name": "limit", "in": "query", "schema": {
        "type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
]
_AUDIT_PAGE = _obj({"events": {"type": "array", "items": _ref("AuditEvent")}}, ["events"])


def _body(schema: str, required: bool = True) -> dict:
    return {"required": required, **_json(_ref(schema))}


def _list_params(v2: bool) -> list[dict]:
    params = [
        {"name": "metadata", "in": "query", "schema": {"type": "string"},
         "description": "URL-encoded `k=v&k2=v2`: only sandboxes with all these entries."},
        {"name": "template", "in": "query", "schema": {"type": "string"}},
        {"name": "startedAfter", "in": "query", "schema": _TIME},
        {"name": "order", "in": "query",
         "schema": {"type": "string", "enum": ["asc", "desc"], "default": "asc"}},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
        {"name": "nextToken", "in": "query", "schema": {"type": "string"},
         "description": "The X-Next-Token of the previous page."},
    ]
    if v2:
        params.insert(0, {"name": "state", "in": "query", "style": "form", "explode": False,
                          "schema": {"type": "array", "items": {
                              "type": "string", "enum": ["running", "paused"]},
                              "default": ["running", "paused"]}})
    return params


def _create(op_id: str) -> dict:
    return {
        "operationId": op_id, "summary": "Create a sandbox", "tags": ["sandboxes"],
        "parameters": [{"name": "Idempotency-Key", "in": "header",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        "description": "Retries with the same key get the same sandbox; "
                                       "reuse after it was killed is 409."}],
        "requestBody": _body("NewSandbox"),
        "responses": {
            **_ok(201, "The new sandbox.", _ref("Sandbox"), {"Server-Timing": {
                "description": "Where the create's time went.",
                "schema": {"type": "string"}}}),
            **_BAD, "404": _error("No such template."),
            "409": _error("The Idempotency-Key names a sandbox that has ended."),
            "429": _error("A limit is reached: the server's HUTCH_MAX_SANDBOXES, or one of "
                          "the key's tenant quotas (the message names the limit, its value "
                          "and the key's use now). Nothing was created."),
        },
    }


def _list(op_id: str, v2: bool) -> dict:
    return {
        "operationId": op_id, "summary": "List the caller's sandboxes", "tags": ["sandboxes"],
        "description": ("Running and paused by default." if v2 else "Running ones only."),
        "parameters": _list_params(v2),
        "responses": {**_ok(200, "One page of sandboxes.", {
            "type": "array", "items": _ref("ListedSandbox")}, {"X-Next-Token": {
                "description": "Present when there is a next page: pass it as nextToken.",
                "schema": {"type": "string"}}}), **_BAD},
    }


def _connect(op_id: str) -> dict:
    return {
        "operationId": op_id, "summary": "Connect to a running sandbox", "tags": ["sandboxes"],
        "parameters": [_SANDBOX_ID], "requestBody": _body("Connect", required=False),
        "responses": {**_ok(200, "The sandbox, with its access token.", _ref("Sandbox")),
                      **_BAD, **_NOT_FOUND},
    }


def _operations() -> dict[str, dict[str, dict]]:
    from hutch.server.routes import _UNSUPPORTED

    ops: dict[str, dict[str, dict]] = {
        "/health": {"get": {
            "operationId": "health", "summary": "Server health", "tags": ["server"],
            "security": [],
            "responses": _ok(200, "The server is up.", _ref("Health"))}},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "tags": ["server"],
            "security": [],
            "responses": _ok(200, "The OpenAPI document.", {"type": "object"})}},
        "/sandboxes": {"post": _create("createSandbox"),
                       "get": _list("listSandboxes", v2=False)},
        "/v2/sandboxes": {"post": _create("createSandboxV2"),
                          "get": _list("listSandboxesV2", v2=True)},
        "/sandboxes/{id}": {
            "get": {"operationId": "getSandbox", "summary": "A sandbox's details",
                    "tags": ["sandboxes"], "parameters": [_SANDBOX_ID],
                    "responses": {**_ok(200, "The sandbox.", _ref("SandboxDetail")),
                                  **_BAD, **_NOT_FOUND}},
            "delete": {"operationId": "killSandbox", "summary": "Kill a sandbox",
                       "tags": ["sandboxes"], "parameters": [_SANDBOX_ID],
                       "responses": {**_ok(204, "Killed."), **_BAD, **_NOT_FOUND}},
        },
        "/sandboxes/{id}/connect": {"post": _connect("connectSandbox")},
        "/v2/sandboxes/{id}/connect": {"post": _connect("connectSandboxV2")},
        "/sandboxes/{id}/timeout": {"post": {
            "operationId": "setSandboxTimeout", "summary": "Set when a sandbox is killed",
            "tags": ["sandboxes"], "parameters": [_SANDBOX_ID], "requestBody": _body("Timeout"),
            "responses": {**_ok(204, "Set."), **_BAD, **_NOT_FOUND}}},
        "/sandboxes/{id}/network": {"put": {
            "operationId": "updateSandboxNetwork",
            "summary": "Replace what a sandbox may reach, at once",
            "tags": ["sandboxes"], "parameters": [_SANDBOX_ID],
            "requestBody": _body("NetworkUpdate"),
            "responses": {**_ok(204, "In force for the sandbox's next packet."), **_BAD,
                          **_NOT_FOUND}}},
        "/sandboxes/{id}/egress": {"get": {
            "operationId": "getSandboxEgressLog",
            "summary": "hutch extra: what the sandbox tried to reach, and what was decided",
            "tags": ["sandboxes"],
            "parameters": [_SANDBOX_ID, {"name": "limit", "in": "query", "schema": {
                "type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}],
            "responses": {**_ok(200, "The latest decisions, oldest first: every answer of "
                                     "its resolver, every connection it opened (refusals "
                                     "rate limited to 100/s).",
                                _obj({"events": {"type": "array",
                                                 "items": _ref("EgressEvent")}},
                                     ["events"])),
                          **_BAD, **_NOT_FOUND}}},
        "/sandboxes/{id}/audit": {"get": {
            "operationId": "getSandboxAuditLog",
            "summary": "hutch extra: the sandbox's audit trail",
            "description": (
                "API calls about it, its lifecycle, the processes and PTYs started and the "
                "files read and written through the data plane, and its egress decisions; "
                "kept after the sandbox is gone. Without `since` or `after`: the latest "
                "`limit` events; with either: the first `limit` from there on. With "
                "`follow=true` the answer is NDJSON (`application/x-ndjson`): those events, "
                "then each new one as it is written (within a fraction of a second), an "
                "empty line every 15 s of silence; it ends once the sandbox has ended."),
            "tags": ["sandboxes"],
            "parameters": [_SANDBOX_ID, *_AUDIT_QUERY, {
                "name": "follow", "in": "query", "schema": {"type": "boolean",
                                                            "default": False}}],
            "responses": {**_ok(200, "The events, oldest first.", _AUDIT_PAGE,
                                stream={"application/x-ndjson": {
                                    "schema": {"type": "string"}}}),
                          **_BAD, **_NOT_FOUND}}},
        "/audit": {"get": {
            "operationId": "getKeyAuditLog",
            "summary": "hutch extra: the caller's own API calls about no sandbox",
            "description": "`api` events of the calling key (key management, lists, failed "
                           "creates); a sandbox's own are under /sandboxes/{id}/audit.",
            "tags": ["server"], "parameters": _AUDIT_QUERY,
            "responses": {**_ok(200, "The events, oldest first.", _AUDIT_PAGE), **_BAD}}},
        "/metrics": {"get": {
            "operationId": "getPrometheusMetrics", "tags": ["server"],
            "summary": "hutch extra: Prometheus metrics of the server and its sandboxes",
            "description": (
                "The Prometheus text format (0.0.4): create latency by template and source "
                "(pool or cold), process-start and code-run latency, data-plane requests, "
                "sandboxes by state, the warm pools, and each running sandbox's CPU time and "
                "memory (every tenant's: the admin key only). The key may come as "
                "`Authorization: Bearer <key>`, what Prometheus sends. The metrics are listed "
                "in docs/operations.md; scrapes are not recorded in the audit trail."),
            "responses": {"200": {"description": "The metrics, read now.", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_ADMIN}}},
        "/sandboxes/{id}/metrics": {"get": {
            "operationId": "getSandboxMetrics", "summary": "A sandbox's resource use now",
            "tags": ["sandboxes"], "parameters": [_SANDBOX_ID],
            "responses": {**_ok(200, "One sample.", {"type": "array",
                                                     "items": _ref("SandboxMetric")}),
                          **_BAD, **_NOT_FOUND}}},
        "/sandboxes/{id}/snapshots": {"post": {
            "operationId": "createSnapshot", "tags": ["sandboxes"],
            "summary": "Save a running sandbox's files as a template of yours",
            "parameters": [_SANDBOX_ID],
            "requestBody": {"required": False, **_json(_obj({
                "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
                "memory": {"type": "boolean", "description": (
                    "Only false (or absent): files are saved, running processes are not.")},
            }))},
            "responses": {**_ok(201, "The snapshot: create sandboxes from snapshotID.",
                                _ref("SnapshotInfo")), **_BAD, **_NOT_FOUND}}},
        "/snapshots": {"get": {
            "operationId": "listSnapshots", "tags": ["sandboxes"],
            "summary": "Your snapshots",
            "parameters": [
                {"name": "sandboxID", "in": "query", "schema": {"type": "string"}},
                {"name": "name", "in": "query", "schema": {"type": "string"}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "nextToken", "in": "query", "schema": {"type": "string"}}],
            "responses": {**_ok(200, "A page of them; X-Next-Token names the next.",
                                {"type": "array", "items": _ref("SnapshotInfo")}), **_BAD}}},
        "/sandboxes/{id}/fork": {"post": {
            "operationId": "forkSandbox", "tags": ["sandboxes"],
            "summary": "New sandboxes from one snapshot of a running one",
            "parameters": [_SANDBOX_ID],
            "requestBody": {"required": False, **_json(_obj({
                "timeout": {"type": "integer", "minimum": 0, "default": 15},
                "count": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
            }))},
            "responses": {**_ok(201, "One entry per fork: the sandbox, or why it failed.",
                                {"type": "array", "items": _obj({
                                    "sandbox": _ref("Sandbox"), "error": _ref("Error")})}),
                          **_BAD, **_NOT_FOUND}}},
        "/templates/contexts": {"post": {
            "operationId": "uploadTemplateContext", "tags": ["templates"],
            "summary": "Upload a build context (a gzipped tar of what COPY/ADD name)",
            "requestBody": {"required": True, "content": {"application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}},
            "responses": {**_ok(201, "Its id (the SHA-256 of the upload).",
                                _obj({"context": {"type": "string"}}, ["context"])),
                          "400": _error("Not a gzipped tar, an entry that points outside "
                                        "the context, or too large.")}}},
        "/templates": {
            "post": {"operationId": "buildTemplate", "tags": ["templates"],
                     "summary": "Build one of your templates, streaming the build",
                     "requestBody": _body("TemplateBuild"),
                     "responses": {
                         "200": {"description": (
                             "NDJSON, as it happens: `{type: step, index, total, step, cached}`, "
                             "`{type: log, text}`, then `{type: done, template, layers}` or "
                             "`{type: error, message}` (the failing step, its output and exit "
                             "code)."),
                             "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                         "400": _error("A bad name (or a built-in's), definition or base."),
                         "404": _error("The context was not uploaded.")}},
            "get": {"operationId": "listTemplates", "tags": ["templates"],
                    "summary": "The built-in templates and yours",
                    "responses": _ok(200, "Every template this key can start.",
                                     {"type": "array", "items": _ref("TemplateInfo")})},
        },
        "/templates/{name}": {
            "get": {"operationId": "getTemplate", "tags": ["templates"],
                    "summary": "One of your templates", "parameters": [_TEMPLATE_NAME],
                    "responses": {**_ok(200, "How it was built and how it starts.",
                                        _ref("TemplateInfo")),
                                  "404": _error("No such template of yours.")}},
            "delete": {"operationId": "removeTemplate", "tags": ["templates"],
                       "summary": "Remove one of your templates (running sandboxes stay)",
                       "parameters": [_TEMPLATE_NAME],
                       "responses": {**_ok(204, "Removed."),
                                     "404": _error("No such template of yours.")}},
        },
        "/templates/{name}/logs": {"get": {
            "operationId": "getTemplateLogs", "tags": ["templates"],
            "summary": "The output of each build step that made one of your templates",
            "parameters": [_TEMPLATE_NAME],
            "responses": {"200": {"description": "Text: a `## STEP` heading, then its output, "
                                                 "for each layer, bottom first.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "404": _error("No such template of yours.")}}},
        "/keys": {
            "post": {"operationId": "createKey", "summary": "Create an API key (a tenant)",
                     "tags": ["keys"], "requestBody": _body("NewKey", required=False),
                     "responses": {**_ok(201, "The new key.", _ref("CreatedKey")),
                                   **_BAD, **_ADMIN}},
            "get": {"operationId": "listKeys", "summary": "List API keys", "tags": ["keys"],
                    "responses": {**_ok(200, "Every key, revoked ones included.",
                                        {"type": "array", "items": _ref("Key")}), **_ADMIN}},
        },
        "/keys/{id}": {
            "patch": {
                "operationId": "changeKey", "tags": ["keys"],
                "summary": "Change an API key's tenant quotas (in force for its next create)",
                "parameters": [_KEY_ID], "requestBody": _body("KeyChange"),
                "responses": {**_ok(200, "The key as it is now.", _ref("Key")), **_BAD,
                              **_ADMIN, "404": _error("No such key."),
                              "409": _error("The admin key (exempt from quotas) or a "
                                            "revoked key.")}},
            "delete": {
                "operationId": "revokeKey", "tags": ["keys"],
                "summary": "Revoke an API key and kill its running sandboxes",
                "parameters": [_KEY_ID],
                "responses": {**_ok(204, "Revoked (again, if it was)."), **_ADMIN,
                              "404": _error("No such key."),
                              "409": _error("The admin key cannot be revoked.")}},
        },
    }
    for path, methods in _UNSUPPORTED:
        params = [_SANDBOX_ID] if "{id}" in path else []
        for method in methods:
            ops.setdefault(path, {})[method.lower()] = {
                "operationId": "unsupported" + "".join(
                    p.strip("{}").title() for p in path.split("/")) + method.title(),
                "summary": "E2B endpoint hutch does not serve yet", "tags": ["unsupported"],
                "parameters": params, "responses": {"501": _error("Not supported.")},
            }
    return ops


_DATA_PLANE = f"""\
## Data plane

The same URL also serves every sandbox. A request goes to a sandbox, not to the endpoints
below, when it carries the headers `E2b-Sandbox-Id: <sandbox id>` and `E2b-Sandbox-Port:
<port>`, or when its Host is `<port>-<sandbox id>.<domain>` (with `HUTCH_DOMAIN` set).

- Port {AGENT_PORT} is the in-sandbox agent: E2B's envd protocol (Connect RPC for processes
  and the filesystem, `/files` for uploads and downloads), described in
  [docs/protocol.md](../docs/protocol.md). When the sandbox has an access token
  (`envdAccessToken`), every request but `/health` needs it as `X-Access-Token` (signed
  `/files` URLs carry a signature instead).
- Port 49999, in sandboxes of templates that have one (`code-interpreter`), is the code
  interpreter: `POST /execute` (an NDJSON stream), `/contexts`, described in
  [docs/code-interpreter.md](../docs/code-interpreter.md). `/execute` needs the access token
  as `X-Access-Token`; the context calls accept it or the `trafficAccessToken` as
  `E2B-Traffic-Access-Token` (E2B's SDK sends only the latter there).
- Any other port is that TCP port inside the sandbox, HTTP and WebSocket (in network mode
  `none` reached through the agent). Ports are private by default: they need the sandbox's
  `trafficAccessToken` as `E2B-Traffic-Access-Token` unless the sandbox was created with
  `network.allowPublicTraffic: true` (or the server with `HUTCH_PUBLIC_PORTS=true`). The
  routing headers and `X-Access-Token` are not passed on.
- An unknown or killed sandbox answers 502 `{{"sandboxId", "message": "The sandbox was not
  found", "code": 502}}`; a port nothing listens on answers 502 with "port is not open". A
  WebSocket handshake that cannot reach the sandbox is refused with these same HTTP answers;
  the sandbox server's own refusal is passed on as it came.
- Bodies stream unbuffered both ways; WebSocket messages are relayed one by one with their
  close codes (a sandbox server that drops the connection closes the client with 1014; a
  killed sandbox closes it with 1001).
"""


def document() -> dict:
    """The OpenAPI 3.1 document of hutch's HTTP API (a fresh copy each call)."""
    paths = _operations()
    for item in paths.values():
        for op in item.values():
            if op.get("security") != []:
                op["responses"]["401"] = _error("A missing, unknown or revoked API key.")
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "hutch",
            "version": "1",
            "summary": "Self-hosted sandboxes for AI agents, wire-compatible with E2B.",
            "description": (
                "The control plane is E2B's REST API (v1 and v2 paths of create, connect "
                "and list, as SDK releases differ) plus hutch's `/keys`. Every error body is "
                "`Error`.\n\n" + _DATA_PLANE),
        },
        "servers": [{"url": "http://127.0.0.1:7711", "description": "The default address."}],
        "security": [{"apiKey": []}],
        "tags": [
            {"name": "sandboxes"}, {"name": "keys", "description": "Admin key only."},
            {"name": "server"},
            {"name": "unsupported", "description": "Answered 501 rather than 404 so a "
                                                   "caller learns the feature is missing."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {
                "type": "apiKey", "in": "header", "name": "X-API-KEY",
                "description": "Also accepted as `Authorization: Bearer <key>`. A missing, "
                               "unknown or revoked key is 401."}},
            "schemas": SCHEMAS,
        },
    })


def operations(doc: dict | None = None) -> set[tuple[str, str]]:
    """(path, METHOD) of every operation in the document."""
    doc = doc if doc is not None else document()
    return {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
