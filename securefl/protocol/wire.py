"""Shared wire-format helpers: size limit before decoding, strict typed decoding with msgspec.

Every protocol's messages are frozen, tagged ``msgspec.Struct`` types with
``forbid_unknown_fields=True``; a message is size-checked *before* it is parsed, and any decoding
failure becomes a :class:`~securefl.errors.MessageError` (a remote fault).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from securefl.errors import MessageError

T = TypeVar("T")

#: default upper bound of one encoded message (bytes); protocols pass tighter limits per type.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def encode(msg: msgspec.Struct) -> bytes:
    """Canonical msgpack encoding of a message."""
    return msgspec.msgpack.encode(msg)


def decode(data: bytes, typ: type[T] | Any, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> T:
    """Decode ``data`` as ``typ`` after checking its size; raise :class:`MessageError` on anything off."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise MessageError(f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        result: T = msgspec.msgpack.decode(data, type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MessageError(f"malformed message: {exc}") from exc
    return result
