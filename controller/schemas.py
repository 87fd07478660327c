"""The shapes of ``--json`` output, one JSON Schema per command: the stable interface scripts
may rely on. docs/json-schemas.json holds them (controller/docgen.py writes it); the netns
tests validate every command's output against them, with the small checker below (the
keywords used here: type, required, properties, additionalProperties, items, enum)."""

from __future__ import annotations

STR, NUM, INT, BOOL = {"type": "string"}, {"type": "number"}, {"type": "integer"}, {"type": "boolean"}
STRS = {"type": "array", "items": STR}


def _object(required: dict, optional: dict | None = None, extra: bool = False) -> dict:
    return {"type": "object", "required": sorted(required), "properties": {**required, **(optional or {})},
            "additionalProperties": extra}


NODE = _object({"name": STR, "overlay_ip": STR, "identity": STR, "identity_key": STR, "public_key": STR,
                "reachable": BOOL, "via": STRS, "rtt_ms": NUM, "link": STR, "endpoint": STR,
                "last_handshake": NUM, "rx_bytes": INT, "tx_bytes": INT, "static": BOOL, "left": BOOL})
SELF = _object({"name": STR, "overlay_ip": STR, "identity": STR, "public_key": STR, "interface": STR,
                "state": {"type": "string", "enum": ["up", "down"]}, "version": STR, "domain": STR, "names": STR,
                "public_endpoint": STR,
                "nat": {"type": "string", "enum": ["none", "endpoint-independent", "symmetric", "translated",
                                                   "unknown"]},
                "refused": STRS, "listen_port": INT})
ROUTE = _object({"destination": STR, "gateway": STR, "via": STR})
HISTORY = _object({"ago_s": NUM, "what": STR, "detail": STR})
LINK = _object({"state": {"type": "string", "enum": ["down", "attempting", "up"]}, "endpoint": STR,
                "endpoint_kind": STR, "static": BOOL, "initiator": BOOL, "pinned": BOOL, "failures": INT,
                "last_failure": STR, "candidates": STRS, "rtt_ms": {"type": ["number", "null"]},
                "claimed_rtt_ms": {"type": ["integer", "null"]}, "up_for_s": {"type": ["number", "null"]},
                "next_attempt_in_s": {"type": ["number", "null"]}, "idle": BOOL, "quiet": BOOL,
                "history": {"type": "array", "items": HISTORY}})

SCHEMAS: dict[str, dict] = {
    "status": _object({"self": SELF, "nodes": {"type": "array", "items": NODE},
                       "routes": {"type": "array", "items": ROUTE}}),
    "nodes": _object({"nodes": {"type": "array", "items": NODE}}),
    "routes": _object({"routes": {"type": "array", "items": ROUTE}}),
    "counters": _object({"counters": {"type": "object", "additionalProperties": INT}}),
    "ping": _object({"node": STR, "replies": {"type": "array", "items": _object(
        {"rtt_ms": {"type": ["number", "null"]}, "via": STR})}}),
    "why": _object({"name": STR, "overlay_ip": STR, "reachable": BOOL, "via": STRS, "static": BOOL, "left": BOOL,
                    "endpoints": STRS, "link": {"type": ["object", "null"], **{k: v for k, v in LINK.items()
                                                                             if k != "type"}},
                    "reason": STR}),
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: object, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def problems(value: object, schema: dict, where: str = "$") -> list[str]:
    """Where ``value`` does not fit ``schema`` (empty: it fits)."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return [f"{where}: {type(value).__name__}, not {'/'.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not one of {schema['enum']}"]
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: missing {key!r}" for key in schema.get("required", ()) if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                out += problems(item, props[key], f"{where}.{key}")
            elif extra is False:
                out.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                out += problems(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += problems(item, schema["items"], f"{where}[{i}]")
    return out
