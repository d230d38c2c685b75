#!/usr/bin/env python3
"""Checks Spotter's OpenAPI document and live answers against it, with reference validators.

    check_openapi.py SPEC.json EXCHANGES.json

SPEC.json is what `GET /api/openapi.json` served. EXCHANGES.json is a list of recorded
exchanges, each `{"method", "route", "status", "content_type", "body"}` where `route` is the
path template as the document names it (`/api/jobs/{id}`) and `body` is the parsed JSON answer
(or null for a non-JSON one).

1. The document must be a valid OpenAPI 3.x document (`openapi-spec-validator`).
2. Each exchange's status must be documented for its route and method, with its content type.
3. Each JSON body must validate against the documented schema (`jsonschema`, draft 2020-12),
   made strict: an object may hold no property the document does not declare
   (`unevaluatedProperties: false` on every object schema, and on every answer as a whole so
   that flattened types are covered), so an undocumented field fails as well as a missing one.

Exit status 0 when everything holds; 1 with every problem listed otherwise.
"""

import copy
import json
import sys

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec


def flattened_components(spec):
    """Components used as parts of another object (in allOf, or a oneOf of such a part): these
    cannot forbid other properties themselves; the answer as a whole does."""
    schemas = spec.get("components", {}).get("schemas", {})
    parts = set()

    def refs(node, inside_all_of):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref and inside_all_of:
                name = ref.rsplit("/", 1)[-1]
                if name not in parts:
                    parts.add(name)
                    for branch in schemas.get(name, {}).get("oneOf", []) + schemas.get(
                        name, {}
                    ).get("anyOf", []):
                        refs(branch, True)
            for key, value in node.items():
                refs(value, inside_all_of or key == "allOf")
        elif isinstance(node, list):
            for item in node:
                refs(item, inside_all_of)

    for schema in schemas.values():
        refs(schema, False)
    return parts


def strict(node, part=False):
    """`node` with `unevaluatedProperties: false` on every object schema, except on the parts
    of an `allOf` (and the branches of such a part's `oneOf`): those only hold some of the
    object's properties, so the schema that combines them forbids the rest."""
    if isinstance(node, list):
        return [strict(item, part) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "allOf":
            out[key] = [strict(item, True) for item in value]
        elif key in ("oneOf", "anyOf"):
            out[key] = [strict(item, part) for item in value]
        else:
            out[key] = strict(value)
    objecty = "properties" in node or "allOf" in node
    if objecty and not part and "additionalProperties" not in node:
        out["unevaluatedProperties"] = False
    return out


def strict_components(spec):
    components = copy.deepcopy(spec.get("components", {}))
    parts = flattened_components(spec)
    schemas = components.get("schemas", {})
    for name, schema in schemas.items():
        schemas[name] = strict(schema, name in parts)
    return components


def main():
    spec_path, exchanges_path = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    with open(exchanges_path) as f:
        exchanges = json.load(f)

    problems = []
    try:
        validate_spec(spec)
    except Exception as e:  # the validator's own error types vary by version
        problems.append(f"the document is not valid OpenAPI: {e}")

    components = strict_components(spec)
    covered = set()
    for ex in exchanges:
        where = f"{ex['method'].upper()} {ex['route']} -> {ex['status']}"
        operation = spec.get("paths", {}).get(ex["route"], {}).get(ex["method"].lower())
        if operation is None:
            problems.append(f"{where}: the route is not documented")
            continue
        response = operation.get("responses", {}).get(str(ex["status"]))
        if response is None:
            problems.append(f"{where}: this status is not documented")
            continue
        covered.add((ex["route"], ex["method"].lower(), str(ex["status"])))
        content = response.get("content", {})
        kind = ex["content_type"].split(";")[0].strip()
        if kind not in content and f"{kind.split('/')[0]}/*" in content:
            kind = f"{kind.split('/')[0]}/*"  # a documented media-type range
        if kind not in content:
            problems.append(f"{where}: content type {kind} is not documented ({list(content)})")
            continue
        if ex["body"] is None:
            continue
        schema = content[kind].get("schema")
        if schema is None:
            problems.append(f"{where}: no schema for a JSON answer")
            continue
        if "$ref" in schema:
            # The answer as a whole forbids what none of its (flattened) parts declares.
            whole = {"allOf": [schema], "unevaluatedProperties": False}
        else:
            whole = strict(schema)
        document = dict(whole, components=components)
        validator = Draft202012Validator(document)
        for error in sorted(validator.iter_errors(ex["body"]), key=lambda e: list(e.path)):
            at = "/".join(str(p) for p in error.absolute_path) or "(the answer)"
            problems.append(f"{where}: at {at}: {error.message[:300]}")

    operations = {
        (route, method)
        for route, item in spec.get("paths", {}).items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    untried = sorted(operations - {(r, m) for r, m, _ in covered})
    print(
        f"OpenAPI {spec.get('openapi')}: {len(operations)} operations, "
        f"{len(exchanges)} answers checked, {len(covered)} documented statuses met"
    )
    if untried:
        problems.append(f"operations with no answer checked: {untried}")
    for p in problems:
        print("PROBLEM:", p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
