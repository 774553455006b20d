"""A container for secret bytes whose ``repr``/``str`` never show the value (cf. Tink's export token)."""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """Secret bytes. ``repr`` is redacted; :meth:`expose` is the one greppable way to read them."""

    __slots__ = ("_label", "_value")

    def __init__(self, value: bytes, *, label: str = "secret") -> None:
        if not isinstance(value, bytes | bytearray):
            raise TypeError("Secret holds bytes")
        self._value = bytes(value)
        self._label = label

    def expose(self) -> bytes:
        """Return the secret bytes. Every call site is a place where a secret leaves its wrapper."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret({self._label}, {len(self._value)} bytes, <redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:  # secrets are not dictionary keys
        raise TypeError("Secret is not hashable")

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret cannot be pickled")
