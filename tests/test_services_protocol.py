"""The shared request schema: every malformed input maps to its machine-readable code."""

import json

import pytest

from edgellm.services.protocol import (ERROR_CODES, Limits, ServiceError, decode_payload,
                                       encode_line, parse_request)

LIMITS = Limits(max_prompt_tokens=100, max_tokens=50, default_max_tokens=7,
                default_deadline_s=30, max_deadline_s=60, max_prompt_chars=200, max_messages=4)


def code_of(obj, extra=None):
    with pytest.raises(ServiceError) as info:
        parse_request(obj, LIMITS, extra)
    assert info.value.code in ERROR_CODES
    return info.value.code, info.value.field


def test_minimal_prompt_request_gets_the_defaults():
    req, extras = parse_request({"prompt": "hi"}, LIMITS)
    assert (req.prompt, req.messages, req.max_tokens, req.deadline_s, req.stream, req.id) == \
        ("hi", None, 7, 30, False, None)
    assert req.sampling == {} and req.stop == [] and req.schema is None and extras == {}


def test_full_chat_request_is_carried_through():
    req, _ = parse_request({
        "id": "a1", "messages": [{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": "hi"}],
        "max_tokens": 50, "temperature": 0, "top_k": 5, "top_p": 0.5, "min_p": 0.1,
        "repeat_penalty": 1.1, "repeat_last_n": 32, "seed": 3, "stop": "\n",
        "schema": {"type": "object"}, "stream": True, "deadline_s": 60}, LIMITS)
    assert req.id == "a1" and req.max_tokens == 50 and req.stream and req.deadline_s == 60
    assert req.messages == [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"}]
    assert req.sampling == {"temperature": 0, "top_k": 5, "top_p": 0.5, "min_p": 0.1,
                            "repeat_penalty": 1.1, "repeat_last_n": 32, "seed": 3}
    assert req.stop == ["\n"] and req.schema == {"type": "object"}


@pytest.mark.parametrize("obj, code, field", [
    ([1, 2], "bad_json", None),
    ("text", "bad_json", None),
    ({}, "missing_field", "prompt"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "bad_field", "prompt"),
    ({"prompt": "a", "max_token": 5}, "unknown_field", "max_token"),
    ({"prompt": 5}, "bad_field", "prompt"),
    ({"prompt": "a", "max_tokens": "5"}, "bad_field", "max_tokens"),
    ({"prompt": "a", "max_tokens": True}, "bad_field", "max_tokens"),
    ({"prompt": "a", "max_tokens": 2.5}, "bad_field", "max_tokens"),
    ({"prompt": "a", "max_tokens": -1}, "bad_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": 0}, "bad_value", "max_tokens"),
    ({"prompt": "a", "max_tokens": 10**12}, "bad_value", "max_tokens"),
    ({"prompt": "a", "temperature": -0.1}, "bad_value", "temperature"),
    ({"prompt": "a", "top_p": 0}, "bad_value", "top_p"),
    ({"prompt": "a", "seed": -3}, "bad_value", "seed"),
    ({"prompt": "a", "stream": "yes"}, "bad_field", "stream"),
    ({"prompt": "a", "stop": ["", "x"]}, "bad_value", "stop"),
    ({"prompt": "a", "stop": ["s"] * 9}, "bad_value", "stop"),
    ({"prompt": "a", "deadline_s": 0}, "bad_value", "deadline_s"),
    ({"prompt": "a", "deadline_s": 61}, "bad_value", "deadline_s"),
    ({"prompt": "a", "id": 1.5}, "bad_field", "id"),
    ({"prompt": "a", "id": "x" * 129}, "bad_value", "id"),
    ({"prompt": "a" * 201}, "prompt_too_long", "prompt"),
    ({"messages": []}, "bad_value", "messages"),
    ({"messages": [{"role": "user", "content": "a"}] * 5}, "bad_value", "messages"),
    ({"messages": ["hi"]}, "bad_field", "messages[0]"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "bad_value", "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, "bad_field", "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a", "x": 1}]}, "unknown_field",
     "messages[0].x"),
    ({"messages": [{"role": "user", "content": "a" * 201}]}, "prompt_too_long", "messages"),
    ({"prompt": "a", "schema": {"type": "string", "pattern": "x"}}, "bad_value", "schema"),
    ({"prompt": "a", "schema": "object"}, "bad_field", "schema"),
    ({"prompt": "a", "temperature": float("nan")}, "bad_field", "temperature"),
])
def test_bad_requests_get_their_code_and_field(obj, code, field):
    assert code_of(obj) == (code, field)


def test_transport_fields_are_typed_and_returned_apart():
    req, extras = parse_request({"prompt": "a", "reply_to": "dev/1", "compact": True}, LIMITS,
                                {"reply_to": str, "compact": bool})
    assert extras == {"reply_to": "dev/1", "compact": True} and req.prompt == "a"
    assert code_of({"prompt": "a", "reply_to": 3}, {"reply_to": str}) == ("bad_field",
                                                                          "reply_to")


def test_openai_text_parts_are_joined():
    req, _ = parse_request({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}, LIMITS)
    assert req.messages == [{"role": "user", "content": "ab"}]


@pytest.mark.parametrize("data, code", [
    (b"{", "bad_json"),
    (b"\xff\xfe{}", "bad_utf8"),
    (b"x" * 101, "too_large"),
    (b"[" * 100, "bad_json"),
])
def test_payload_decoding_errors(data, code):
    with pytest.raises(ServiceError) as info:
        decode_payload(data, 100)
    assert info.value.code == code


def test_deeply_nested_payload_is_bad_json_not_a_crash():
    with pytest.raises(ServiceError) as info:
        decode_payload(b"[" * 100000 + b"]" * 100000, 10**6)
    assert info.value.code == "bad_json"


def test_error_reply_and_line_encoding():
    err = ServiceError("busy", "queue full")
    assert err.reply("7") == {"id": "7", "type": "error", "code": "busy",
                              "message": "queue full"}
    line = encode_line({"text": "a\nb é"})
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"text": "a\nb é"}
