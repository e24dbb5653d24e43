"""A token constraint that keeps generated text a prefix of JSON matching a JSON schema.

Generation asks two questions of a constraint (the protocol in edgellm.runtime.generation):

    allows(text_so_far, piece) -> bool   may the candidate token's text be appended?
    is_complete(text_so_far)   -> bool   is the text a whole value, so EOG may end it?

The answer comes from a character-level pushdown automaton. Its state is a set of parse
stacks (a set because `anyOf`, type lists and enums may leave several readings of the same
prefix open); a stack is a tuple of immutable frames, so copying a state for a candidate
piece is free and a rejected candidate leaves nothing behind. States are memoised by text:
the text grows by one accepted piece per token, so each call feeds only the new characters.

Supported schema keywords: type (a name or a list), properties, required,
additionalProperties (bool or schema), items, minItems, maxItems, enum, const, anyOf, oneOf
(read as anyOf), minLength, maxLength, minimum, maximum, exclusiveMinimum,
exclusiveMaximum, $ref to "#/..." (with $defs / definitions), and the annotations title,
description, default, examples, format, $schema, $id, $comment. Anything else raises
EdgeLLMError naming the keyword, so a schema is never silently half-enforced.

Choices made for generation rather than validation:
- An object with `properties` admits only those keys unless additionalProperties says
  otherwise; an object without `properties` admits any key.
- Output is compact: at most MAX_WHITESPACE spaces between tokens (no newlines or tabs) and
  nothing after a complete top-level value. Small models otherwise spend a large share of
  max_tokens on pretty-printing ("{\n    ") and can stall in padding.
- Numbers are capped at MAX_INT_DIGITS integer and MAX_FRAC_DIGITS fraction digits, and a
  number prefix is allowed only if some completion of it lies within minimum/maximum; an
  exponent is allowed only for numbers without bounds.
- Keys are matched as written: a declared property name that would need escaping in JSON
  cannot be generated.
"""

from __future__ import annotations

import json
from fractions import Fraction

from edgellm.errors import EdgeLLMError

MAX_WHITESPACE = 1
MAX_INT_DIGITS = 18
MAX_FRAC_DIGITS = 12
MAX_FREE_KEY_CHARS = 64
_MEMO_ENTRIES = 512

_ANNOTATIONS = {"title", "description", "default", "examples", "format", "$schema", "$id",
                "$comment", "$defs", "definitions", "readOnly", "writeOnly", "deprecated"}
_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems",
             "maxItems", "enum", "const", "anyOf", "oneOf", "minLength", "maxLength",
             "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "$ref"}
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_WS = " "
_HEX = "0123456789abcdefABCDEF"


class _Node:
    """One compiled schema: the keywords that matter for generation, with defaults filled in.

    Nodes are hashed by identity; frames hold them, and a frame set deduplicates on them.
    """

    __slots__ = ("types", "properties", "required", "additional", "items", "min_items",
                 "max_items", "enum", "min_length", "max_length", "minimum", "maximum",
                 "excl_min", "excl_max", "any_of", "ref", "_resolved")

    def __init__(self):
        self.types: frozenset[str] = frozenset(_TYPES)
        self.properties: dict[str, _Node] | None = None
        self.required: frozenset[str] = frozenset()
        self.additional: _Node | None = None       # None: no keys beyond `properties`
        self.items: _Node | None = None
        self.min_items = 0
        self.max_items: int | None = None
        self.enum: tuple[str, ...] | None = None    # JSON texts of the allowed values
        self.min_length = 0
        self.max_length: int | None = None
        self.minimum: Fraction | None = None
        self.maximum: Fraction | None = None
        self.excl_min = False
        self.excl_max = False
        self.any_of: tuple[_Node, ...] | None = None
        self.ref: str | None = None
        self._resolved: _Node | None = None


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.by_ref: dict[str, _Node] = {}

    def compile(self, schema, where: str) -> _Node:
        node = _Node()
        if schema is True or schema == {}:
            return self._any(node)
        if schema is False:
            raise EdgeLLMError(f"JSON schema at {where} is `false`: no value can match it")
        if not isinstance(schema, dict):
            raise EdgeLLMError(f"JSON schema at {where} must be an object or a boolean, "
                               f"got {type(schema).__name__}")
        unknown = sorted(k for k in schema if k not in _KEYWORDS and k not in _ANNOTATIONS)
        if unknown:
            raise EdgeLLMError(
                f"JSON schema at {where} uses {', '.join(map(repr, unknown))}, which "
                f"constrained generation does not support; supported keywords: "
                f"{', '.join(sorted(_KEYWORDS))}")
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#"):
                raise EdgeLLMError(f"JSON schema at {where}: only local $ref ('#/...') is "
                                   f"supported, got {ref!r}")
            if len(schema.keys() - _ANNOTATIONS) > 1:
                raise EdgeLLMError(f"JSON schema at {where}: $ref cannot be combined with "
                                   f"other keywords here")
            node.ref = ref
            self._target(ref)   # fail now, not during generation, on a dangling ref
            return node
        for key in ("anyOf", "oneOf"):
            if key in schema:
                alts = schema[key]
                if not isinstance(alts, list) or not alts:
                    raise EdgeLLMError(f"JSON schema at {where}: {key} must be a non-empty list")
                rest = {k: v for k, v in schema.items() if k != key and k not in _ANNOTATIONS}
                if rest:
                    # {"type": "object", "anyOf": [...]}: fold the siblings into each branch.
                    alts = [{**rest, **a} if isinstance(a, dict) else a for a in alts]
                node.any_of = tuple(self.compile(a, f"{where}/{key}/{i}")
                                    for i, a in enumerate(alts))
                return node

        if "type" in schema:
            t = schema["type"]
            names = [t] if isinstance(t, str) else t
            if not isinstance(names, list) or not names or any(n not in _TYPES for n in names):
                raise EdgeLLMError(f"JSON schema at {where}: type must be one of {_TYPES} or "
                                   f"a list of them, got {t!r}")
            node.types = frozenset(names)
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            if not isinstance(values, list) or not values:
                raise EdgeLLMError(f"JSON schema at {where}: enum must be a non-empty list")
            node.enum = tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False) for v in values))

        props = schema.get("properties")
        if props is not None:
            if not isinstance(props, dict):
                raise EdgeLLMError(f"JSON schema at {where}: properties must be an object")
            node.properties = {k: self.compile(v, f"{where}/properties/{k}")
                               for k, v in props.items()}
        req = schema.get("required", [])
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            raise EdgeLLMError(f"JSON schema at {where}: required must be a list of names")
        node.required = frozenset(req)
        missing = node.required - set(node.properties or ())
        addl = schema.get("additionalProperties",
                          False if node.properties is not None else True)
        if addl is True:
            node.additional = self._any(_Node())
        elif addl is False:
            node.additional = None
            if missing:
                raise EdgeLLMError(f"JSON schema at {where}: required names "
                                   f"{sorted(missing)} are not in properties")
        else:
            node.additional = self.compile(addl, f"{where}/additionalProperties")

        if "items" in schema:
            if isinstance(schema["items"], list):
                raise EdgeLLMError(f"JSON schema at {where}: tuple-form items (a list) is "
                                   f"not supported; use one schema for all items")
            node.items = self.compile(schema["items"], f"{where}/items")
        else:
            node.items = self._any(_Node())
        node.min_items = self._count(schema, "minItems", 0, where)
        node.max_items = self._count(schema, "maxItems", None, where)
        node.min_length = self._count(schema, "minLength", 0, where)
        node.max_length = self._count(schema, "maxLength", None, where)
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                v = schema[key]
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise EdgeLLMError(f"JSON schema at {where}: {key} must be a number")
                bound = Fraction(v)
                if key in ("minimum", "exclusiveMinimum"):
                    node.minimum, node.excl_min = bound, key == "exclusiveMinimum"
                else:
                    node.maximum, node.excl_max = bound, key == "exclusiveMaximum"
        return node

    @staticmethod
    def _count(schema, key, default, where):
        v = schema.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise EdgeLLMError(f"JSON schema at {where}: {key} must be a non-negative integer")
        return v

    @staticmethod
    def _any(node: _Node) -> _Node:
        node.additional = node          # any key, any value (the node is "anything")
        node.items = node
        return node

    def _target(self, ref: str) -> _Node:
        if ref not in self.by_ref:
            obj = self.root
            for part in ref[1:].split("/")[1:] if ref != "#" else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(obj, dict) or part not in obj:
                    raise EdgeLLMError(f"JSON schema: $ref {ref!r} points at nothing")
                obj = obj[part]
            placeholder = _Node()
            self.by_ref[ref] = placeholder   # recursion through the same ref ends here
            compiled = self.compile(obj, ref)
            for slot in _Node.__slots__:
                setattr(placeholder, slot, getattr(compiled, slot))
        return self.by_ref[ref]


def _resolve(node: _Node, compiler: _Compiler) -> _Node:
    while node.ref is not None:
        if node._resolved is None:
            node._resolved = compiler._target(node.ref)
        node = node._resolved
    return node


# ---- frames ---------------------------------------------------------------------------------
# Each frame is a tuple whose first item names it. The stack's last frame is the one fed.
#   ("root", node, done)
#   ("value", node, ws)                          a value starts here; ws = whitespace seen
#   ("object", node, st, seen, key, ws)         st: open, key, in_key, colon, value, next
#   ("array", node, st, count, ws)              st: open, value, next
#   ("string", node, length, esc)               esc: 0, 1 after '\', 2..5 inside \uXXXX
#   ("number", node, text)
#   ("literal", candidates, text)               enum/const/true/false/null, matched by text


class JSONSchemaConstraint:
    """Constrains generation to JSON text that matches `schema` (a dict; {} allows any JSON).

    Raises EdgeLLMError for a schema it cannot enforce.
    """

    def __init__(self, schema: dict | bool | None = None):
        schema = {} if schema is None else schema
        self.schema = schema
        self._compiler = _Compiler(schema if isinstance(schema, dict) else {})
        self._root = self._compiler.compile(schema, "#")
        start = (("root", self._root, False), ("value", self._root, 0))
        self._start = frozenset([start])
        self._memo: dict[str, frozenset] = {"": self._start}

    def skeleton(self) -> str:
        """A JSON text of the schema's shape: its objects' properties in order, each value a
        placeholder of its type (an enum's or const's first value). Speculation proposes
        from it (keys, punctuation, fixed values), and the model verifies every token."""
        return _skeleton(self.schema if isinstance(self.schema, dict) else {}, self.schema, 0)

    # -- the constraint protocol --------------------------------------------------------------

    def allows(self, text_so_far: str, piece: str) -> bool:
        if not piece:
            # An empty piece changes nothing and would let the model spin in place.
            return False
        states = self._states(text_so_far)
        for ch in piece:
            if not states:
                return False
            states = self._feed(states, ch)
        if not states:
            return False
        self._remember(text_so_far + piece, states)
        return True

    def is_complete(self, text_so_far: str) -> bool:
        return any(self._stack_complete(s) for s in self._states(text_so_far))

    # -- state memo ---------------------------------------------------------------------------

    def _states(self, text: str) -> frozenset:
        states = self._memo.get(text)
        if states is not None:
            return states
        # The usual caller appends one piece per call; start from the longest known prefix.
        base = max((t for t in self._memo if text.startswith(t)), key=len)
        states = self._memo[base]
        for ch in text[len(base):]:
            if not states:
                break
            states = self._feed(states, ch)
        self._remember(text, states)
        return states

    def _remember(self, text: str, states: frozenset) -> None:
        if len(self._memo) >= _MEMO_ENTRIES:
            self._memo = {"": self._start}
        self._memo[text] = states

    # -- the automaton ------------------------------------------------------------------------

    def _feed(self, states: frozenset, ch: str) -> frozenset:
        out: set = set()
        for stack in states:
            out.update(self._step(stack, ch))
        return frozenset(out)

    def _step(self, stack: tuple, ch: str) -> list:
        top = stack[-1]
        kind = top[0]
        rest = stack[:-1]
        if kind == "value":
            return self._step_value(rest, top, ch)
        if kind == "string":
            return self._step_string(rest, top, ch)
        if kind == "number":
            return self._step_number(rest, top, ch)
        if kind == "literal":
            return self._step_literal(rest, top, ch)
        if kind == "object":
            return self._step_object(rest, top, ch)
        if kind == "array":
            return self._step_array(rest, top, ch)
        return []   # root: the value is done and nothing may follow

    def _finish(self, rest: tuple) -> list:
        """Pops a completed value: its parent moves on to what follows a value."""
        parent = rest[-1]
        if parent[0] == "root":
            return [rest[:-1] + (("root", parent[1], True),)]
        if parent[0] == "object":
            return [rest[:-1] + (("object", parent[1], "next", parent[3], "", 0),)]
        # array
        return [rest[:-1] + (("array", parent[1], "next", parent[3], 0),)]

    def _alternatives(self, node: _Node) -> list[_Node]:
        node = _resolve(node, self._compiler)
        if node.any_of is None:
            return [node]
        out = []
        for alt in node.any_of:
            out.extend(self._alternatives(alt))
        return out

    def _step_value(self, rest, top, ch) -> list:
        _, node, ws = top
        if ch in _WS:
            return [rest + (("value", node, ws + 1),)] if ws < MAX_WHITESPACE else []
        out = []
        for alt in self._alternatives(node):
            if alt.enum is not None:
                cands = tuple(c for c in alt.enum if c.startswith(ch))
                if cands:
                    out.append(rest + (("literal", cands, ch),))
                continue
            t = alt.types
            if ch == "{" and "object" in t:
                out.append(rest + (("object", alt, "open", frozenset(), "", 0),))
            elif ch == "[" and "array" in t:
                if alt.max_items is None or alt.max_items > 0 or alt.min_items == 0:
                    out.append(rest + (("array", alt, "open", 0, 0),))
            elif ch == '"' and "string" in t:
                out.append(rest + (("string", alt, 0, 0),))
            elif (ch == "-" or ch.isdigit() and ch.isascii()) and t & {"number", "integer"}:
                if self._number_feasible(ch, alt):
                    out.append(rest + (("number", alt, ch),))
            elif ch in "tf" and "boolean" in t:
                out.append(rest + (("literal", ("true",) if ch == "t" else ("false",), ch),))
            elif ch == "n" and "null" in t:
                out.append(rest + (("literal", ("null",), ch),))
        return out

    def _step_literal(self, rest, top, ch) -> list:
        _, cands, text = top
        grown = text + ch
        longer = tuple(c for c in cands if c.startswith(grown))
        out = [rest + (("literal", longer, grown),)] if longer else []
        if text in cands:
            # A complete literal ends at the first character that does not extend it
            # (needed for numeric enums: 1 is complete but 12 may follow).
            for s in self._finish(rest):
                out.extend(self._step(s, ch))
        return out

    def _step_string(self, rest, top, ch) -> list:
        _, node, n, esc = top
        if esc == 0:
            if ch == '"':
                return self._finish(rest) if n >= node.min_length else []
            if node.max_length is not None and n >= node.max_length:
                return []
            if ch == "\\":
                return [rest + (("string", node, n, 1),)]
            if ord(ch) < 0x20:
                return []
            return [rest + (("string", node, n + 1, 0),)]
        if esc == 1:
            if ch in '"\\/bfnrt':
                return [rest + (("string", node, n + 1, 0),)]
            if ch == "u":
                return [rest + (("string", node, n, 2),)]
            return []
        if ch not in _HEX:
            return []
        if esc == 5:
            return [rest + (("string", node, n + 1, 0),)]
        return [rest + (("string", node, n, esc + 1),)]

    def _step_number(self, rest, top, ch) -> list:
        _, node, text = top
        grown = text + ch
        if _number_prefix_ok(grown, "number" not in node.types, node) and \
                self._number_feasible(grown, node):
            return [rest + (("number", node, grown),)]
        if _number_complete(text) and _in_bounds(Fraction(text), node):
            out = []
            for s in self._finish(rest):
                out.extend(self._step(s, ch))
            return out
        return []

    def _step_object(self, rest, top, ch) -> list:
        _, node, st, seen, key, ws = top

        def gap():
            return [rest + (("object", node, st, seen, key, ws + 1),)] \
                if ws < MAX_WHITESPACE else []

        if st in ("open", "key"):
            if ch in _WS:
                return gap()
            if ch == '"' and self._more_keys(node, seen):
                return [rest + (("object", node, "in_key", seen, "", 0),)]
            if ch == "}" and st == "open" and node.required <= seen:
                return self._finish(rest)
            return []
        if st == "in_key":
            if ch == '"':
                if key in seen:
                    return []
                if (node.properties and key in node.properties) or node.additional is not None:
                    return [rest + (("object", node, "colon", seen | {key}, key, 0),)]
                return []
            grown = key + ch
            if node.properties and any(p.startswith(grown) and p not in seen
                                       for p in node.properties):
                return [rest + (("object", node, "in_key", seen, grown, 0),)]
            if node.additional is not None and ch not in '"\\' and ord(ch) >= 0x20 \
                    and len(grown) <= MAX_FREE_KEY_CHARS:
                return [rest + (("object", node, "in_key", seen, grown, 0),)]
            return []
        if st == "colon":
            if ch in _WS:
                return gap()
            if ch != ":":
                return []
            props = node.properties or {}
            child = props[key] if key in props else node.additional
            return [rest + (("object", node, "value", seen, "", 0), ("value", child, 0))]
        if st == "next":
            if ch in _WS:
                return gap()
            if ch == "," and self._more_keys(node, seen):
                return [rest + (("object", node, "key", seen, "", 0),)]
            if ch == "}" and node.required <= seen:
                return self._finish(rest)
            return []
        return []

    def _more_keys(self, node: _Node, seen: frozenset) -> bool:
        if node.additional is not None:
            return True
        return any(p not in seen for p in (node.properties or ()))

    def _step_array(self, rest, top, ch) -> list:
        _, node, st, count, ws = top
        if ch in _WS:
            return [rest + (("array", node, st, count, ws + 1),)] if ws < MAX_WHITESPACE else []
        if st == "open":
            out = []
            if ch == "]" and node.min_items == 0:
                out.extend(self._finish(rest))
            if node.max_items is None or node.max_items > 0:
                pushed = rest + (("array", node, "value", 1, 0), ("value", node.items, 0))
                out.extend(self._step(pushed, ch))
            return out
        if st == "next":
            if ch == "]" and count >= node.min_items:
                return self._finish(rest)
            if ch == "," and (node.max_items is None or count < node.max_items):
                return [rest + (("array", node, "value", count + 1, 0),
                                ("value", node.items, 0))]
        return []

    def _number_feasible(self, text: str, node: _Node) -> bool:
        if node.minimum is None and node.maximum is None:
            return True
        return _number_reachable(text, node, integer="number" not in node.types)

    def _stack_complete(self, stack: tuple) -> bool:
        top = stack[-1]
        if top[0] == "root":
            return top[2]
        if len(stack) != 2:
            return False
        # A number or literal directly under the root ends where the text ends.
        if top[0] == "number":
            return _number_complete(top[2]) and _in_bounds(Fraction(top[2]), top[1])
        if top[0] == "literal":
            return top[2] in top[1]
        return False


# ---- number grammar -------------------------------------------------------------------------

def _skeleton(schema, root: dict, depth: int) -> str:
    if not isinstance(schema, dict) or depth > 8:
        return "null"
    if "$ref" in schema and isinstance(schema["$ref"], str) and schema["$ref"].startswith("#"):
        target = root
        for part in schema["$ref"][1:].split("/")[1:]:
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _skeleton(target, root, depth + 1)
    if "const" in schema:
        return json.dumps(schema["const"])
    if schema.get("enum"):
        return json.dumps(schema["enum"][0])
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _skeleton(schema[key][0], root, depth + 1)
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "object" or "properties" in schema:
        items = [f"{json.dumps(k)}: {_skeleton(v, root, depth + 1)}"
                 for k, v in (schema.get("properties") or {}).items()]
        return "{" + ", ".join(items) + "}"
    if kind == "array":
        return "[" + _skeleton(schema.get("items", {}), root, depth + 1) + "]"
    return {"string": '""', "integer": "0", "number": "0", "boolean": "true"}.get(kind, "null")


def _split_number(text: str):
    """'-12.5e3' -> ('-', '12', '.5', 'e3'); parts are '' when absent."""
    sign = "-" if text.startswith("-") else ""
    body = text[len(sign):]
    i = 0
    while i < len(body) and body[i].isdigit():
        i += 1
    int_part, rest = body[:i], body[i:]
    frac = exp = ""
    if rest.startswith("."):
        j = 1
        while j < len(rest) and rest[j].isdigit():
            j += 1
        frac, rest = rest[:j], rest[j:]
    if rest[:1] in ("e", "E"):
        exp, rest = rest, ""
    return sign, int_part, frac, exp, rest


def _number_prefix_ok(text: str, integer: bool, node: _Node) -> bool:
    """Is `text` a prefix of a JSON number (an integer if `integer`) within the digit caps?"""
    if not text.isascii():
        return False
    sign, int_part, frac, exp, junk = _split_number(text)
    if junk:
        return False
    if not int_part:
        return not (frac or exp)          # "" or "-"
    if len(int_part) > 1 and int_part[0] == "0":
        return False
    if len(int_part) > MAX_INT_DIGITS:
        return False
    if (frac or exp) and integer:
        return False
    if len(frac) - 1 > MAX_FRAC_DIGITS:
        return False
    if exp:
        if node.minimum is not None or node.maximum is not None:
            return False
        if frac == ".":
            return False
        after = exp[1:]
        digits = after[1:] if after[:1] in ("+", "-") else after
        if not (digits == "" or digits.isdigit()) or len(digits) > 3:
            return False
    return True


def _number_complete(text: str) -> bool:
    sign, int_part, frac, exp, junk = _split_number(text)
    if junk or not int_part or frac == ".":
        return False
    if exp:
        digits = exp[1:].lstrip("+-")
        return digits.isdigit()
    return True


def _in_bounds(value: Fraction, node: _Node) -> bool:
    if node.minimum is not None and (value < node.minimum or
                                     node.excl_min and value == node.minimum):
        return False
    if node.maximum is not None and (value > node.maximum or
                                     node.excl_max and value == node.maximum):
        return False
    return True


def _number_reachable(text: str, node: _Node, integer: bool) -> bool:
    """Can some completion of the number prefix `text` land within the node's bounds?

    The completions of a prefix form a few intervals: the integer digits so far either end
    (value I, then maybe a fraction: [I, I+1)) or grow by k digits ([I*10^k, (I+1)*10^k)).
    A prefix with a fraction started stays within [x, x + 10^-digits). Negative prefixes
    mirror these. The bounds are checked against the intervals' closures, which is exact
    enough for generation: it never rules out a reachable value.
    """
    sign, int_part, frac, _, _ = _split_number(text)
    neg = sign == "-"
    lo_b, hi_b = node.minimum, node.maximum

    def hits(a: Fraction, b: Fraction) -> bool:   # closed magnitude interval [a, b]
        lo, hi = (-b, -a) if neg else (a, b)
        if lo_b is not None and hi < lo_b or hi_b is not None and lo > hi_b:
            return False
        return True

    if not int_part:
        # "" or "-": anything of that sign within the digit caps.
        return hits(Fraction(0), Fraction(10) ** MAX_INT_DIGITS)
    whole = Fraction(int(int_part))
    if frac:
        digits = frac[1:]
        x = whole + (Fraction(int(digits), 10 ** len(digits)) if digits else 0)
        width = Fraction(1, 10 ** len(digits))
        return hits(x, x + width)
    if hits(whole, whole if integer else whole + 1):
        return True
    if int_part == "0":
        return False
    for k in range(1, MAX_INT_DIGITS - len(int_part) + 1):
        scale = Fraction(10) ** k
        if hits(whole * scale, (whole + 1) * scale):
            return True
    return False
