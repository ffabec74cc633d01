"""A value that validates against a JSON schema, chosen deterministically from a seed: the mock provider's
tool-call arguments and structured outputs.

Covers what tool and response schemas use in practice: types (and type lists), properties / required /
additionalProperties, items / prefixItems / min-maxItems, enum, const, anyOf / oneOf / allOf, $ref into
$defs / definitions, numeric bounds and multipleOf, string lengths and the common formats. A `pattern` is
not generated against (no regex inversion): such a string is left as a plain word.
"""

from __future__ import annotations

import random
from typing import Any

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()

_FORMATS = {"date-time": "2024-01-02T03:04:05Z", "date": "2024-01-02", "time": "03:04:05Z",
            "email": "mock@example.com", "uri": "https://example.com/mock", "url": "https://example.com/mock",
            "uuid": "00000000-0000-4000-8000-000000000000", "hostname": "example.com", "ipv4": "192.0.2.1",
            "ipv6": "2001:db8::1"}
_MAX_DEPTH = 8


def example(schema: Any, seed: str) -> Any:
    """A value for `schema` (a dict, or a bool schema); equal seeds give equal values."""
    root = schema if isinstance(schema, dict) else {}
    return _value(schema, random.Random(seed), root, 0)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    for _ in range(_MAX_DEPTH):
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        node: Any = root
        for part in ref.lstrip("#").strip("/").split("/") if ref != "#" else []:
            node = node.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return {}
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _value(schema: Any, rng: random.Random, root: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict):
        return None if schema is False else WORDS[rng.randrange(len(WORDS))]
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][rng.randrange(len(schema["enum"]))]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            rest = {k: v for k, v in schema.items() if k != key}
            first = next((o for o in options if not (isinstance(o, dict) and o.get("type") == "null")), options[0])
            return _value({**rest, **_resolve(first, root)} if isinstance(first, dict) else first, rng, root,
                          depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                part = _resolve(part, root)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                required = [*merged.get("required", []), *part.get("required", [])]
                merged = {**merged, **part, "properties": props, "required": required}
        return _value(merged, rng, root, depth + 1)
    typ = schema.get("type")
    if isinstance(typ, list):
        typ = next((t for t in typ if t != "null"), "null")
    if typ is None:
        typ = ("object" if "properties" in schema else "array" if "items" in schema or "prefixItems" in schema
               else "string")
    if depth > _MAX_DEPTH:
        return {} if typ == "object" else [] if typ == "array" else None if typ == "null" else _scalar(typ, schema, rng)
    if typ == "object":
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: _value(sub, rng, root, depth + 1) for name, sub in props.items()}
    if typ == "array":
        return _array(schema, rng, root, depth)
    return _scalar(typ, schema, rng)


def _array(schema: dict[str, Any], rng: random.Random, root: dict[str, Any], depth: int) -> list[Any]:
    prefix: list[Any] = schema["prefixItems"] if isinstance(schema.get("prefixItems"), list) else []
    low = int(schema.get("minItems", 0))
    high = int(schema.get("maxItems", max(low, len(prefix), 2)))
    count = max(low, min(high, max(len(prefix), 2)))
    items = schema.get("items", {})
    out = [_value(prefix[i] if i < len(prefix) else items, rng, root, depth + 1) for i in range(count)]
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for v in out:
            if v not in seen:
                seen.append(v)
        out = seen if len(seen) >= low else out
    return out


def _scalar(typ: str, schema: dict[str, Any], rng: random.Random) -> Any:
    if typ == "null":
        return None
    if typ == "boolean":
        return rng.random() < 0.5
    if typ in ("integer", "number"):
        return _number(typ, schema, rng)
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    text = WORDS[rng.randrange(len(WORDS))]
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    while len(text) < low:
        text += " " + WORDS[rng.randrange(len(WORDS))]
    return text[:high] if isinstance(high, int) and len(text) > high else text


def _number(typ: str, schema: dict[str, Any], rng: random.Random) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    lo = float(low) if isinstance(low, int | float) else 0.0
    hi = float(high) if isinstance(high, int | float) else lo + 100.0
    if "exclusiveMinimum" in schema and "minimum" not in schema:
        lo += 1 if typ == "integer" else (hi - lo) / 1000 or 1e-9
    if "exclusiveMaximum" in schema and "maximum" not in schema:
        hi -= 1 if typ == "integer" else (hi - lo) / 1000 or 1e-9
    step = schema.get("multipleOf")
    if isinstance(step, int | float) and step > 0:
        k_lo, k_hi = -(-lo // step), hi // step
        k = k_lo + rng.randrange(int(max(0, k_hi - k_lo)) + 1) if k_hi >= k_lo else k_lo
        value: float = k * step
        return int(value) if typ == "integer" else value
    if typ == "integer":
        a, b = int(-(-lo // 1)), int(hi // 1)
        return a + rng.randrange(max(0, b - a) + 1)
    return min(hi, max(lo, round(lo + rng.random() * (hi - lo), 3)))
