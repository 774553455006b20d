"""Hypothesis strategies that turn a valid encoding into a hostile one (issue 17, item 1).

- byte-level: truncation, bit flips, overwritten / inserted / deleted / duplicated spans, and
  msgpack headers that declare 2^32 - 1 elements or bytes (huge declared lengths);
- structural: the seed is decoded to builtins, one value anywhere in it (the tag included) is
  replaced by a value of the wrong type, NaN/Inf, an out-of-range integer, a long list, a deep
  nesting or an unknown field, and re-encoded in the seed's own format (msgpack, JSON, JSON lines);
- random bytes, and deep nesting on its own.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from hypothesis import strategies as st

#: msgpack headers declaring 2^32 - 1 items/bytes: array32, map32, bin32, str32, ext32
HUGE_HEADERS = (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01")
DEPTH = 5000


def deep_msgpack(depth: int = DEPTH) -> bytes:
    return b"\x91" * depth + b"\xc0"


def deep_json(depth: int = DEPTH) -> bytes:
    return b"[" * depth + b"]" * depth


def _hostile_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(),
        st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]),
        st.integers(),
        st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=40), st.binary(max_size=80),
        st.sampled_from(["", "\x00", "secagg.advertise.v1", "ckks.commitment", "\ud7ff" * 3]),
    )


def hostile_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        _hostile_scalars(),
        st.recursive(_hostile_scalars(), lambda c: st.lists(c, max_size=4)
                     | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=8),
        st.integers(0, 3).map(lambda k: [[[]]] * (10**k)),  # long lists
        st.just(_nest(200)),
    )


def _nest(depth: int) -> Any:
    out: Any = []
    for _ in range(depth):
        out = [out]
    return out


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _replace(obj[head], rest, value)}
    copy = list(obj)
    copy[head] = _replace(copy[head], rest, value)
    return copy


def _decode_builtin(data: bytes, fmt: str) -> Any:
    if fmt == "msgpack":
        return msgspec.msgpack.decode(data)
    if fmt == "jsonl":
        return [json.loads(line) for line in data.splitlines() if line.strip()]
    return json.loads(data)


def _encode_builtin(obj: Any, fmt: str) -> bytes | None:
    try:
        if fmt == "msgpack":
            return msgspec.msgpack.encode(obj)
        if fmt == "jsonl":
            return b"".join(json.dumps(x, separators=(",", ":"), sort_keys=True).encode() + b"\n"
                            for x in obj)
        return json.dumps(obj, separators=(",", ":"), sort_keys=True,
                          default=lambda b: b.hex()).encode()
    except (OverflowError, TypeError, ValueError, RecursionError):
        return None  # not representable in this format (e.g. a 2^70 integer in msgpack)


@st.composite
def structural(draw: st.DrawFn, seed: bytes, fmt: str) -> bytes:
    """Replace one value (or add an unknown field) anywhere in the decoded seed."""
    obj = _decode_builtin(seed, fmt)
    path = draw(st.sampled_from(_paths(obj)))
    if draw(st.booleans()) and path and isinstance(_get(obj, path[:-1]), dict):
        parent = dict(_get(obj, path[:-1]))
        parent[draw(st.sampled_from(["extra", "type", "version", path[-1]]))] = draw(hostile_values())
        obj = _replace(obj, path[:-1], parent)
    else:
        obj = _replace(obj, path, draw(hostile_values()))
    out = _encode_builtin(obj, fmt)
    return seed if out is None else out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def byte_level(draw: st.DrawFn, seed: bytes) -> bytes:
    """1 to 4 byte-level edits of the seed."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "set", "insert", "delete", "dup", "huge"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "truncate":
            del data[pos:]
        elif kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCB, 0xFF, 0x22, 0x5B,
                                              0x7B, 0x0A]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
        elif kind == "huge":
            hdr = draw(st.sampled_from(HUGE_HEADERS))
            data[pos : pos + (len(hdr) if draw(st.booleans()) else 0)] = hdr
    return bytes(data)


def hostile_inputs(seeds: tuple[bytes, ...], fmt: str) -> st.SearchStrategy[bytes]:
    """Everything this module makes, for one target."""
    seed = st.sampled_from(seeds)
    parts: list[st.SearchStrategy[bytes]] = [
        seed.flatmap(byte_level),
        st.binary(max_size=512),
        st.sampled_from([b"", deep_msgpack(), deep_json(), b"\xc1", b"null", b"NaN", b"[]", b"{}"]),
    ]
    if fmt in ("msgpack", "json", "jsonl"):
        parts.append(seed.flatmap(lambda s: structural(s, fmt)))
    return st.one_of(*parts)


# --- TOML --------------------------------------------------------------------------------------------
_TOML_VALUES = ("nan", "inf", "-inf", "+nan", "1e999", "-1", "0", "9223372036854775808", "true",
                '"x"', '""', "[]", "[1, \"a\"]", "{a = 1}", "1979-05-27T07:32:00Z", "0.5",
                "[" * 300 + "]" * 300, "'''\n'''", '"\\u0000"')


@st.composite
def toml_documents(draw: st.DrawFn, keys: list[str]) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        key = draw(st.sampled_from([*keys, "unknown", "a.b", '"quoted key"', "[table]"]))
        value = draw(st.sampled_from(_TOML_VALUES) | st.text(max_size=20).map(json.dumps))
        lines.append(f"{key} = {value}" if not key.startswith("[") else key)
    return "\n".join(lines).encode("utf-8", "surrogatepass")
