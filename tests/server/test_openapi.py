"""The OpenAPI document matches what the server serves: the same routes, and real answers of a
real server fit the documented schemas (no undocumented fields, no missing required ones)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from hutch.server.openapi import document, operations
from hutch.server.routes import ControlPlane

ROOT = Path(__file__).resolve().parents[2]


def _served() -> set[tuple[str, str]]:
    # The endpoints only run on requests: building the app needs no manager or store.
    app = ControlPlane(None, None, client_id="x").app().app
    out = set()
    for route in app.routes:
        assert isinstance(route, Route), route
        out |= {(route.path, m) for m in route.methods if m != "HEAD"}
    return out


def test_every_route_is_documented_and_nothing_else():
    served, documented = _served(), operations()
    assert served - documented == set(), "routes missing from hutch.server.openapi"
    assert documented - served == set(), "documented operations the server does not serve"


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def test_document_is_consistent():
    doc = document()
    assert doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == {s.strip("{}") for s in path.split("/") if s.startswith("{")}, path
            assert op["responses"], (path, method)
    assert doc["components"]["securitySchemes"]["apiKey"]["name"] == "X-API-KEY"
    assert "docs/protocol.md" in doc["info"]["description"]


def test_generated_spec_file_is_current():
    on_disk = json.loads((ROOT / "spec" / "openapi.json").read_text())
    assert on_disk == document(), "run .venv/bin/python scripts/gen_docs.py"


# -- real answers against the schemas ---------------------------------------------------------

_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
          "null": type(None), "object": dict, "array": list}


def _resolve(schema: dict, doc: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _props(schema: dict, doc: dict) -> tuple[dict, set, dict | None]:
    schema = _resolve(schema, doc)
    if "allOf" in schema:
        props, required = {}, set()
        for sub in schema["allOf"]:
            p, r, _ = _props(sub, doc)
            props.update(p)
            required |= r
        return props, required, None
    return (schema.get("properties", {}), set(schema.get("required", [])),
            schema.get("additionalProperties"))


def conform(value, schema: dict, doc: dict, where: str = "$") -> None:
    """Fail unless ``value`` fits ``schema``; objects may not carry undocumented fields."""
    schema = _resolve(schema, doc)
    if "allOf" not in schema:
        types = schema.get("type")
        if types is not None:
            types = [types] if isinstance(types, str) else types
            ok = any(isinstance(value, _TYPES[t]) and not (
                isinstance(value, bool) and t in ("integer", "number")) for t in types)
            assert ok, f"{where}: {value!r} is not {types}"
        if "enum" in schema:
            assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
        if "const" in schema:
            assert value == schema["const"], where
        if isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                conform(item, schema["items"], doc, f"{where}[{i}]")
    if isinstance(value, dict) and ("properties" in schema or "allOf" in schema
                                    or "additionalProperties" in schema):
        props, required, extra = _props(schema, doc)
        assert required <= value.keys(), f"{where}: missing {required - value.keys()}"
        for key, item in value.items():
            if key in props:
                conform(item, props[key], doc, f"{where}.{key}")
            elif isinstance(extra, dict):
                conform(item, extra, doc, f"{where}.{key}")
            else:
                raise AssertionError(f"{where}: undocumented field {key!r}")


def _answer(doc, path: str, method: str, r: httpx.Response) -> None:
    """The answer fits what the document says this operation answers with that status."""
    responses = doc["paths"][path][method]["responses"]
    assert str(r.status_code) in responses, (path, method, r.status_code, r.text)
    spec = responses[str(r.status_code)]
    for name in spec.get("headers", {}):
        if name == "X-Next-Token" and name.lower() not in r.headers:
            continue   # only present when there is a next page
        assert name.lower() in r.headers, (path, method, name)
    if "content" in spec:
        conform(r.json(), spec["content"]["application/json"]["schema"], doc,
                f"{method.upper()} {path} {r.status_code}")
    else:
        assert r.content == b""


@pytest.fixture(scope="module")
def api(hutch_server):
    with httpx.Client(base_url=hutch_server.url, headers={"X-API-KEY": hutch_server.api_key},
                      timeout=60) as client:
        yield client


def test_served_document_is_public_and_current(hutch_server):
    r = httpx.get(hutch_server.url + "/openapi.json", timeout=30)
    assert r.status_code == 200 and r.json() == document()


def test_real_answers_fit_the_schemas(hutch_server, api):
    doc = document()
    _answer(doc, "/health", "get", api.get("/health"))
    made = []
    try:
        for path in ("/sandboxes", "/v2/sandboxes"):
            r = api.post(path, json={"templateID": "base", "metadata": {"suite": "openapi"},
                                     "memoryMB": 256})
            _answer(doc, path, "post", r)
            made.append(r.json()["sandboxID"])
        sid = made[0]
        _answer(doc, "/sandboxes/{id}", "get", api.get(f"/sandboxes/{sid}"))
        _answer(doc, "/sandboxes/{id}/connect", "post",
                api.post(f"/sandboxes/{sid}/connect", json={"timeout": 300}))
        _answer(doc, "/v2/sandboxes/{id}/connect", "post",
                api.post(f"/v2/sandboxes/{sid}/connect", json={}))
        _answer(doc, "/sandboxes/{id}/timeout", "post",
                api.post(f"/sandboxes/{sid}/timeout", json={"timeout": 300}))
        _answer(doc, "/sandboxes/{id}/metrics", "get", api.get(f"/sandboxes/{sid}/metrics"))
        query = {"metadata": "suite=openapi", "limit": 1}
        for path in ("/sandboxes", "/v2/sandboxes"):
            first = api.get(path, params=query)
            _answer(doc, path, "get", first)
            assert len(first.json()) == 1 and "x-next-token" in first.headers
            rest = api.get(path, params={**query, "nextToken": first.headers["x-next-token"]})
            _answer(doc, path, "get", rest)
        _answer(doc, "/sandboxes/{id}", "delete", api.delete(f"/sandboxes/{made.pop()}"))
        # Errors, each a documented status with the Error body.
        _answer(doc, "/sandboxes/{id}", "get", api.get("/sandboxes/" + "0" * 20))
        _answer(doc, "/sandboxes/{id}", "get", api.get("/sandboxes/NOT-AN-ID"))
        _answer(doc, "/v2/sandboxes", "post", api.post("/v2/sandboxes", json={"timeout": -1}))
        _answer(doc, "/sandboxes", "get", httpx.get(hutch_server.url + "/sandboxes"))
        _answer(doc, "/sandboxes/{id}/pause", "post", api.post(f"/sandboxes/{sid}/pause"))
    finally:
        for sid in made:
            api.delete(f"/sandboxes/{sid}")


def test_key_answers_fit_the_schemas(api):
    doc = document()
    r = api.post("/keys", json={"name": "openapi-check"})
    _answer(doc, "/keys", "post", r)
    key = r.json()
    try:
        _answer(doc, "/keys", "get", api.get("/keys"))
        with httpx.Client(base_url=str(api.base_url), timeout=30,
                          headers={"X-API-KEY": key["key"]}) as tenant:
            _answer(doc, "/keys", "get", tenant.get("/keys"))   # 403: not the admin
            _answer(doc, "/keys/{id}", "patch",
                    tenant.patch(f"/keys/{key['id']}", json={"quotas": {}}))
        _answer(doc, "/keys/{id}", "patch",
                api.patch(f"/keys/{key['id']}", json={"quotas": {"max_sandboxes": 3,
                                                                 "max_cpu": None}}))
        _answer(doc, "/keys/{id}", "patch",
                api.patch(f"/keys/{key['id']}", json={"quotas": {"max_cpu": -1}}))
        _answer(doc, "/keys/{id}", "patch", api.patch("/keys/admin", json={"quotas": {}}))
        _answer(doc, "/keys/{id}", "patch", api.patch("/keys/nosuchkey", json={"quotas": {}}))
    finally:
        _answer(doc, "/keys/{id}", "delete", api.delete(f"/keys/{key['id']}"))
    _answer(doc, "/keys/{id}", "delete", api.delete("/keys/nosuchkey"))
