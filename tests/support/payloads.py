"""Hostile inputs for the fuzz suite: what a fuzzer, a broken client and an attacker send.

Values come as hypothesis strategies; bodies are produced as raw bytes, so the suite can send
what no well-behaved JSON encoder would (lone surrogates, nesting 50,000 deep, broken UTF-8).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

ODD_TEXT = [
    "",
    " ",
    "\ud800",  # a lone surrogate: JSON can carry it, UTF-8 cannot
    "\udfff\ud800",
    "x\x00y",
    "\u202egnp.exe",
    "\ufeff",
    "e\u0301\u0301\u0301",
    "😀" * 50,
    "\uffff\ufffe",
    "a" * 129,
    "a" * 6000,
    "$gt",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "%00",
    "null",
    "1e309",
]
ODD_NUMBERS = [-1, 0, 2**31, 2**53 + 1, 2**63, 10**30, -(10**30), 1.5, float("inf")]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(ODD_NUMBERS),
    st.text(max_size=40),
    st.sampled_from(ODD_TEXT),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)

RAW_BODIES = [
    b"[" * 50_000 + b"]" * 50_000,
    b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    b"{",
    b"\xff\xfe\x00",
    b'{"text": "\xed\xa0\x80"}',  # a surrogate as raw (invalid) UTF-8
    b"NaN",
    b'"just a string"',
    b"[]",
    b"{}",
    b'{"__proto__": {"admin": true}}',
]


def dumps(value: Any) -> bytes:
    # ensure_ascii escapes surrogates as \\udXXX, which is what a hostile client sends
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def values_for(schema: dict[str, Any], definitions: dict[str, Any], sample: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A body for an object schema: each property right, wrong-typed, odd or missing."""
    schema = resolve(schema, definitions)
    properties: dict[str, Any] = schema.get("properties", {})

    def field(name: str) -> st.SearchStrategy[Any]:
        plausible = st.just(sample[name]) if name in sample else scalars
        return st.one_of(plausible, plausible, scalars, json_values, st.sampled_from(ODD_TEXT))

    if not properties:
        return json_values
    anything = st.fixed_dictionaries({}, optional={name: field(name) for name in properties})
    whole = {name: sample[name] for name in properties if name in sample}
    hostile = st.one_of(scalars, json_values, st.sampled_from(ODD_TEXT), st.sampled_from(ODD_NUMBERS))

    def one_wrong(name: str) -> st.SearchStrategy[Any]:
        # A body right in every field but one reaches the use cases, where the bugs hide.
        return hostile.map(lambda value: {**whole, name: value})

    return st.one_of(anything, st.just(whole), *(one_wrong(name) for name in properties))


def resolve(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = definitions[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def raw_bodies(schema: dict[str, Any] | None, definitions: dict[str, Any], sample: dict[str, Any]) -> Any:
    shaped = (values_for(schema, definitions, sample) if schema else json_values).map(dumps)
    return st.one_of(shaped, shaped, shaped, json_values.map(dumps), st.sampled_from(RAW_BODIES))


url_text = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(["%ED%A0%80", "%ff", "%00", "..", "a" * 300, "-1", "99999999999999999999999", "0x10", "1e3"]),
)
