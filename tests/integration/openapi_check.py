"""Checks responses against docs/api/openapi.json: the status must be documented for the
operation, and a JSON body must match the documented schema. Used by the harness on every
request it makes, so every integration test is also a test of the document."""
import json
import os
import re

_DOC_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "api", "openapi.json")
with open(_DOC_PATH) as f:
    DOC = json.load(f)

_ROUTES = []
for _pattern, _item in DOC["paths"].items():
    _regex = "^" + re.sub(r"\{[^}]+\}", "[^/]+", _pattern) + "$"
    _ROUTES.append((re.compile(_regex), _pattern, _item))


class Mismatch(AssertionError):
    pass


def _resolve(node):
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target = DOC
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value, t):
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool) or (
            isinstance(value, float) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(value, schema, where="$"):
    schema = _resolve(schema)
    if "const" in schema and value != schema["const"]:
        raise Mismatch("%s: %r is not %r" % (where, value, schema["const"]))
    if "enum" in schema and value not in schema["enum"]:
        raise Mismatch("%s: %r not in %r" % (where, value, schema["enum"]))
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, t) for t in types):
            raise Mismatch("%s: %r is not of type %s" % (where, value, types))
    if "oneOf" in schema or "anyOf" in schema:
        options = schema.get("oneOf") or schema.get("anyOf")
        errors = []
        for option in options:
            try:
                validate(value, option, where)
                break
            except Mismatch as e:
                errors.append(str(e))
        else:
            raise Mismatch("%s: matches none of the alternatives: %s" % (where, errors))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for req in schema.get("required", []):
            if req not in value:
                raise Mismatch("%s: missing required %r" % (where, req))
        for k, v in value.items():
            if k in props:
                validate(v, props[k], "%s.%s" % (where, k))
            elif schema.get("additionalProperties") is False:
                raise Mismatch("%s: undocumented property %r" % (where, k))
            elif isinstance(schema.get("additionalProperties"), dict):
                validate(v, schema["additionalProperties"], "%s.%s" % (where, k))
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            validate(v, schema["items"], "%s[%d]" % (where, i))


def operation(method, path):
    """The documented (pattern, operation) for a request path, or None when undocumented."""
    path = path.split("?", 1)[0]
    for regex, pattern, item in _ROUTES:
        if regex.match(path):
            op = item.get(method.lower())
            return (pattern, op) if op else (pattern, None)
    return None


def check(method, path, status, content_type, body):
    found = operation(method, path)
    if found is None or found[1] is None:
        return  # unknown paths and methods answer 404/405, which the tests assert themselves
    pattern, op = found
    responses = op["responses"]
    key = str(status)
    if key not in responses:
        raise Mismatch("%s %s answered %d, which the document does not list (%s)"
                       % (method, pattern, status, sorted(responses)))
    resp = _resolve(responses[key])
    content = resp.get("content", {})
    if not content:
        return
    if content_type and content_type.startswith("application/json") and "application/json" in content:
        try:
            value = json.loads(body.decode("utf-8"))
        except ValueError as e:
            raise Mismatch("%s %s %d: body is not JSON: %s" % (method, pattern, status, e))
        validate(value, content["application/json"].get("schema", {}), "%s %s %d" % (method, pattern, status))
    elif content_type:
        media = content_type.split(";")[0].strip()
        if media not in content:
            raise Mismatch("%s %s %d: content type %s not documented (%s)"
                           % (method, pattern, status, media, sorted(content)))
