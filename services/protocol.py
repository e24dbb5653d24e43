"""The request/response schema every transport shares, its validation, and the error codes.

A request is one JSON object (MQTT payload, NDJSON line, serial frame, socket line):

    {"id": "42",                       optional; echoed in every reply (string or integer)
     "prompt": "text"                  either a raw prompt ...
     "messages": [{"role": "user", "content": "text"}, ...]    ... or chat messages
     "max_tokens": 64, "temperature": 0.2, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
     "repeat_penalty": 1.0, "repeat_last_n": 64, "seed": 7, "stop": ["\\n"],
     "schema": {...JSON schema...},    optional: the reply is JSON matching it
     "stream": true,                   chunks as they are generated, then a final
     "deadline_s": 30}                 give up (error "deadline") this long after arrival

A cancel request, {"cancel": "42"}, stops the request with that id from the same client.

Replies (each a JSON object; `id` echoes the request's):

    {"id": "42", "type": "chunk", "seq": 0, "text": "Hel"}
    {"id": "42", "type": "final", "text": "Hello", "finish_reason": "stop", "chunks": 1,
     "json": {...} (schema requests), "stats": {...}}
    {"id": "42", "type": "error", "code": "busy", "message": "..."}

Every accepted request gets exactly one final or error. A streamed final carries no `text`
(the chunks did); `chunks` says how many there were.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from edgellm.errors import EdgeLLMError

# Machine-readable error codes: a client branches on these, a person reads the message.
ERROR_CODES = {
    "bad_json": "the payload is not valid JSON or not a JSON object",
    "bad_utf8": "the payload is not valid UTF-8",
    "too_large": "the payload or frame is larger than the configured maximum",
    "bad_frame": "a serial frame failed its COBS decoding or CRC-32 check",
    "missing_field": "a required field is absent",
    "unknown_field": "a field this server does not know",
    "bad_field": "a field has the wrong JSON type",
    "bad_value": "a field has the right type but a value out of range",
    "prompt_too_long": "the prompt does not fit the limit or the context window",
    "busy": "the request queue is full; retry later",
    "deadline": "the request's deadline passed before it finished",
    "cancelled": "the client cancelled the request or went away",
    "shutting_down": "the service is stopping; retry against another instance",
    "json_incomplete": "max_tokens ran out before the JSON reply was complete",
    "bad_reply_topic": "the MQTT reply topic is empty, has a wildcard, or is too long (for "
                       "compact packets too); the error goes to the default reply topic",
    "unauthorized": "a missing or wrong bearer token (HTTP, TCP socket)",
    "not_found": "no such path or model (HTTP)",
    "internal": "a bug or an unexpected failure; the service keeps running",
}

# Fields of the shared request schema and their JSON types (bool is not a number here).
_FIELDS = {
    "id": (str, int),
    "prompt": str,
    "messages": list,
    "max_tokens": int,
    "temperature": (int, float),
    "top_k": int,
    "top_p": (int, float),
    "min_p": (int, float),
    "repeat_penalty": (int, float),
    "repeat_last_n": int,
    "seed": int,
    "stop": (list, str),
    "schema": (dict, bool),
    "stream": bool,
    "deadline_s": (int, float),
}
_ROLES = ("system", "user", "assistant")
_MAX_STOP = 8
_MAX_ID_CHARS = 128


class ServiceError(Exception):
    """An error reply: a code from ERROR_CODES and a message that says what to change."""

    def __init__(self, code: str, message: str, field: str | None = None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def reply(self, request_id=None) -> dict:
        out = {"id": request_id, "type": "error", "code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. The engine config fills these in."""
    max_prompt_tokens: int = 2048
    max_tokens: int = 512           # ceiling for a request's max_tokens
    default_max_tokens: int = 128
    default_deadline_s: float = 120.0
    max_deadline_s: float = 600.0
    max_prompt_chars: int = 65536
    max_messages: int = 64


@dataclass
class Request:
    """A validated request, independent of the transport it came over."""
    id: str | int | None = None
    prompt: str | None = None
    messages: list[dict] | None = None
    max_tokens: int = 128
    sampling: dict[str, Any] = field(default_factory=dict)   # SamplingParams keyword args
    stop: list[str] = field(default_factory=list)
    schema: dict | bool | None = None
    stream: bool = False
    deadline_s: float = 120.0


def decode_payload(data: bytes | str, max_bytes: int) -> Any:
    """bytes -> parsed JSON, raising ServiceError(too_large | bad_utf8 | bad_json)."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ServiceError("too_large", f"payload is {size} bytes; the limit is {max_bytes}")
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ServiceError("bad_utf8", f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ServiceError("bad_json", f"payload is not JSON: {exc}") from None


def request_id_of(obj: Any):
    """The id to echo in an error reply, when the payload had a usable one."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool):
            return rid if not isinstance(rid, str) else rid[:_MAX_ID_CHARS]
    return None


def _type_name(t) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "an object", bool: "true or false"}
    if isinstance(t, tuple):
        if set(t) == {int, float}:
            return "a number"
        return " or ".join(names[x] for x in t)
    return names[t]


def _check_type(obj: dict, key: str, expected) -> None:
    value = obj[key]
    types = expected if isinstance(expected, tuple) else (expected,)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        raise ServiceError("bad_field", f"{key} must be {_type_name(expected)}, "
                                        f"got {json.dumps(value)[:40]}", key)


def _number(obj, key, lo, hi, lo_open=False):
    v = obj[key]
    if v < lo or v > hi or (lo_open and v == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ServiceError("bad_value", f"{key} must be in {bound}, got {v}", key)
    return v


def parse_request(obj: Any, limits: Limits, extra_fields: dict | None = None
                  ) -> tuple[Request, dict]:
    """Validates a decoded payload. Returns the Request and the transport's own fields.

    `extra_fields` maps the names a transport adds (e.g. MQTT's reply_to) to their types;
    they are type-checked and returned separately. Anything else unknown is rejected.
    """
    if not isinstance(obj, dict):
        raise ServiceError("bad_json", f"a request must be a JSON object, got "
                                       f"{type(obj).__name__}")
    extra_fields = extra_fields or {}
    for key in obj:
        if key not in _FIELDS and key not in extra_fields:
            raise ServiceError("unknown_field", f"unknown field {key!r}; known fields: "
                               f"{', '.join(sorted([*_FIELDS, *extra_fields]))}", key)
    for key, expected in {**_FIELDS, **extra_fields}.items():
        if key in obj and obj[key] is not None:
            _check_type(obj, key, expected)
    extras = {k: obj[k] for k in extra_fields if obj.get(k) is not None}

    req = Request(id=request_id_of(obj))
    if isinstance(obj.get("id"), str) and len(obj["id"]) > _MAX_ID_CHARS:
        raise ServiceError("bad_value", f"id is longer than {_MAX_ID_CHARS} characters", "id")

    has_prompt, has_messages = obj.get("prompt") is not None, obj.get("messages") is not None
    if has_prompt == has_messages:
        raise ServiceError("missing_field" if not has_prompt else "bad_field",
                           "give exactly one of prompt or messages", "prompt")
    if has_prompt:
        if len(obj["prompt"]) > limits.max_prompt_chars:
            raise ServiceError("prompt_too_long", f"prompt has {len(obj['prompt'])} "
                               f"characters; the limit is {limits.max_prompt_chars}", "prompt")
        req.prompt = obj["prompt"]
    else:
        req.messages = parse_messages(obj["messages"], limits)

    if obj.get("max_tokens") is not None:
        req.max_tokens = _number(obj, "max_tokens", 1, limits.max_tokens)
    else:
        req.max_tokens = limits.default_max_tokens
    sampling = {}
    for key, lo, hi, lo_open in (("temperature", 0.0, 5.0, False), ("top_k", 0, 1000, False),
                                 ("top_p", 0.0, 1.0, True), ("min_p", 0.0, 1.0, False),
                                 ("repeat_penalty", 0.0, 5.0, True),
                                 ("repeat_last_n", 0, 4096, False),
                                 ("seed", 0, 2**32 - 1, False)):
        if obj.get(key) is not None:
            sampling[key] = _number(obj, key, lo, hi, lo_open)
    req.sampling = sampling

    stop = obj.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > _MAX_STOP or not all(isinstance(s, str) and s for s in stop):
            raise ServiceError("bad_value", f"stop must be up to {_MAX_STOP} non-empty "
                                            f"strings", "stop")
        req.stop = list(stop)
    if obj.get("schema") is not None:
        req.schema = obj["schema"]
        check_schema(req.schema)
    req.stream = bool(obj.get("stream", False))
    if obj.get("deadline_s") is not None:
        req.deadline_s = _number(obj, "deadline_s", 0.0, limits.max_deadline_s, True)
    else:
        req.deadline_s = limits.default_deadline_s
    return req, extras


def parse_messages(messages: list, limits: Limits) -> list[dict]:
    if not messages:
        raise ServiceError("bad_value", "messages must not be empty", "messages")
    if len(messages) > limits.max_messages:
        raise ServiceError("bad_value", f"{len(messages)} messages; the limit is "
                                        f"{limits.max_messages}", "messages")
    out, total = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ServiceError("bad_field", f"{where} must be an object", where)
        for key in m:
            if key not in ("role", "content", "name"):
                raise ServiceError("unknown_field", f"unknown field {key!r} in {where}; "
                                   f"known: role, content", f"{where}.{key}")
        role, content = m.get("role"), m.get("content")
        if role not in _ROLES:
            raise ServiceError("bad_value", f"{where}.role must be one of {_ROLES}, "
                                            f"got {role!r}", f"{where}.role")
        if isinstance(content, list):
            # OpenAI's content parts: only text parts can reach a text model.
            texts = []
            for part in content:
                if not (isinstance(part, dict) and part.get("type") == "text"
                        and isinstance(part.get("text"), str)):
                    raise ServiceError("bad_value", f"{where}.content parts must be "
                                       f"{{'type': 'text', 'text': ...}}", f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise ServiceError("bad_field", f"{where}.content must be a string",
                               f"{where}.content")
        total += len(content)
        out.append({"role": role, "content": content})
    if total > limits.max_prompt_chars:
        raise ServiceError("prompt_too_long", f"messages have {total} characters; the "
                           f"limit is {limits.max_prompt_chars}", "messages")
    return out


def check_schema(schema) -> None:
    """Compiles a JSON schema once so an unsupported one is a bad_value, not a late failure."""
    # Lazy on purpose: importing anything under edgellm.runtime loads the kernels, and the
    # wire protocol stays importable (and cheap) for clients and tests without them.
    from edgellm.runtime.json_constraint import JSONSchemaConstraint
    try:
        JSONSchemaConstraint(schema)
    except EdgeLLMError as exc:
        raise ServiceError("bad_value", str(exc), "schema") from None


def encode_line(obj: dict) -> bytes:
    """One NDJSON line. ensure_ascii keeps a line free of raw newlines and odd bytes."""
    return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
