"""JSONSchemaConstraint: every text it lets through to completion parses and validates.

The oracle is independent: json.loads for syntax and the `jsonschema` package for the schema.
"""

import json
import random

import pytest

from edgellm.errors import EdgeLLMError
from edgellm.runtime.json_constraint import MAX_WHITESPACE, JSONSchemaConstraint

jsonschema = pytest.importorskip("jsonschema")

SENSOR = {
    "type": "object",
    "properties": {
        "temp": {"type": "number", "minimum": -40, "maximum": 125},
        "on": {"type": "boolean"},
        "mode": {"enum": ["auto", "off", "heat"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
        "note": {"type": ["string", "null"]},
    },
    "required": ["temp", "on"],
}


def accepts(constraint, text: str, piece_len: int = 1) -> bool:
    """Feeds `text` in pieces; True if every piece is allowed and the end is complete."""
    done = ""
    for i in range(0, len(text), piece_len):
        piece = text[i:i + piece_len]
        if not constraint.allows(done, piece):
            return False
        done += piece
    return constraint.is_complete(done)


@pytest.mark.parametrize("text", [
    '{"temp": 21.5, "on": true}',
    '{"on":false,"temp":-3,"mode":"auto","tags":["a","bc"]}',
    '{"temp": 0, "on": true, "count": 9, "note": null}',
    '{"temp": 125, "on": false, "note": "caf\\u00e9 \\"x\\" \\n"}',
    '{"temp": -40, "on": true, "tags": []}',
])
def test_valid_documents_are_accepted_in_any_piece_size(text):
    jsonschema.validate(json.loads(text), SENSOR)
    for piece_len in (1, 2, 3, 7, len(text)):
        assert accepts(JSONSchemaConstraint(SENSOR), text, piece_len), (text, piece_len)


@pytest.mark.parametrize("text", [
    '{"temp": 200, "on": true}',            # above maximum
    '{"temp": -41, "on": true}',            # below minimum
    '{"on": true}',                          # required temp missing
    '{"temp": 1, "on": true, "x": 1}',      # undeclared key
    '{"temp": 1, "on": true, "on": false}',  # duplicate key
    '{"temp": 1, "on": "yes"}',             # wrong type
    '{"temp": 1, "on": true, "mode": "cool"}',  # not in enum
    '{"temp": 1, "on": true, "tags": ["a", "b", "c"]}',  # maxItems
    '{"temp": 1, "on": true, "tags": ["toolong"]}',      # maxLength
    '{"temp": 1, "on": true, "count": 1.5}',             # integer
    '{"temp": 01, "on": true}',              # leading zero
    '{"temp": 1, "on": true} ',              # nothing after the value
    '{"temp": 1, "on": true}{',
    '{"temp": 1, "on": tru}',
    '{"temp": "1\x01", "on": true}',
    '{\n"temp": 1, "on": true}',            # output is compact: no newlines
    '{"temp":  1, "on": true}',              # at most one space per gap
])
def test_invalid_documents_are_rejected(text):
    assert not accepts(JSONSchemaConstraint(SENSOR), text)


def test_empty_piece_is_not_allowed():
    assert not JSONSchemaConstraint(SENSOR).allows("", "")


def test_whitespace_per_gap_is_bounded():
    c = JSONSchemaConstraint({"type": "object"})
    assert MAX_WHITESPACE == 1
    assert c.allows("", " ")
    assert not c.allows(" ", " ")
    assert not c.allows("", "\n")
    assert c.allows(" ", "{")
    assert c.allows("{", ' "a": [1, 2] ')
    assert not c.allows("{", '"a":  1')


def test_only_closing_brace_fits_once_every_declared_key_is_used():
    c = JSONSchemaConstraint({"type": "object", "properties": {"a": {"type": "integer"}}})
    text = '{"a": 1'
    assert accepts_prefix(c, text)
    assert not c.allows(text, ",")
    assert c.allows(text, "}")
    assert not c.is_complete(text)
    assert c.is_complete(text + "}")


def accepts_prefix(constraint, text):
    done = ""
    for ch in text:
        if not constraint.allows(done, ch):
            return False
        done += ch
    return True


def test_number_prefix_must_be_able_to_reach_the_bounds():
    c = JSONSchemaConstraint({"type": "integer", "minimum": 10, "maximum": 99})
    assert c.allows("", "5")          # 50..59 still reachable
    assert c.allows("5", "0")
    assert not c.allows("50", "0")    # 500 > 99
    assert not c.is_complete("5")
    assert c.is_complete("50")
    assert not c.allows("", "-")


def test_top_level_scalars_and_numeric_enums_end_where_the_text_ends():
    assert accepts(JSONSchemaConstraint({"type": "integer"}), "42")
    assert accepts(JSONSchemaConstraint({"enum": [1, 12]}), "1")
    assert accepts(JSONSchemaConstraint({"enum": [1, 12]}), "12")
    assert not accepts(JSONSchemaConstraint({"enum": [1, 12]}), "123")
    assert accepts(JSONSchemaConstraint({"const": "on"}), '"on"')
    assert accepts(JSONSchemaConstraint({"type": "null"}), "null")


def test_any_of_keeps_both_readings_open_until_they_differ():
    schema = {"anyOf": [
        {"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}},
         "required": ["kind", "x"]},
        {"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}},
         "required": ["kind", "y"]},
    ]}
    assert accepts(JSONSchemaConstraint(schema), '{"kind": "a", "x": 3}')
    assert accepts(JSONSchemaConstraint(schema), '{"kind": "b", "y": "z"}')
    assert not accepts(JSONSchemaConstraint(schema), '{"kind": "a", "y": "z"}')


def test_recursive_ref_is_followed():
    schema = {
        "$defs": {"tree": {"type": "object",
                           "properties": {"v": {"type": "integer"},
                                          "kids": {"type": "array",
                                                   "items": {"$ref": "#/$defs/tree"}}},
                           "required": ["v"]}},
        "$ref": "#/$defs/tree",
    }
    c = JSONSchemaConstraint(schema)
    assert accepts(c, '{"v": 1, "kids": [{"v": 2}, {"v": 3, "kids": []}]}')
    assert not accepts(JSONSchemaConstraint(schema), '{"v": 1, "kids": [{"w": 2}]}')


def test_object_without_properties_admits_any_key_and_value():
    assert accepts(JSONSchemaConstraint({"type": "object"}),
                   '{"anything": [1, 2.5e3, "x", {"n": null}], "b": false}')


@pytest.mark.parametrize("schema, word", [
    ({"type": "string", "pattern": "^a"}, "pattern"),
    ({"type": "object", "patternProperties": {}}, "patternProperties"),
    ({"not": {"type": "string"}}, "not"),
    ({"$ref": "http://example.com/s.json"}, "only local"),
    ({"$ref": "#/$defs/missing"}, "points at nothing"),
    ({"type": "decimal"}, "type must be"),
    ({"type": "array", "items": [{"type": "string"}]}, "tuple-form"),
    ({"type": "object", "properties": {}, "required": ["a"]}, "not in properties"),
    (False, "no value can match"),
])
def test_unsupported_or_broken_schemas_raise_a_clear_error(schema, word):
    with pytest.raises(EdgeLLMError, match=word):
        JSONSchemaConstraint(schema)


def random_walk(constraint, rng, alphabet, max_len=120):
    """A random generator that only ever takes allowed pieces: a model stand-in for syntax."""
    text = ""
    for _ in range(max_len):
        if constraint.is_complete(text) and rng.random() < 0.3:
            return text
        options = [p for p in alphabet if constraint.allows(text, p)]
        if not options:
            return text
        text += rng.choice(options)
    return None


ALPHABET = (list('{}[],:" \n') + list("0123456789.-eE+") + ["true", "false", "null", "tr", "ue"]
            + ['"temp"', '"on"', '"mode"', '"tags"', '"count"', '"note"', '"auto"', "a", "b",
               "\\", "u00e9", "\\n", '": ', '", "'])


def test_every_completed_random_walk_parses_and_validates():
    rng = random.Random(1234)
    completed = 0
    for _ in range(120):
        c = JSONSchemaConstraint(SENSOR)
        text = random_walk(c, rng, ALPHABET)
        if text is None or not c.is_complete(text):
            continue
        value = json.loads(text)
        jsonschema.validate(value, SENSOR)
        completed += 1
    assert completed >= 10


def test_random_walk_on_the_any_schema_only_produces_json():
    rng = random.Random(99)
    completed = 0
    for _ in range(120):
        c = JSONSchemaConstraint({})
        text = random_walk(c, rng, ALPHABET, max_len=60)
        if text is None or not c.is_complete(text):
            continue
        json.loads(text)
        completed += 1
    assert completed >= 20
