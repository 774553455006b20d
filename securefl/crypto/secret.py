"""A container for secret bytes whose ``repr``/``str`` never show the value (cf. Tink's export token),
and a base for msgspec Structs holding secrets whose every representation redacts them."""

from __future__ import annotations

import hmac
from typing import Any, ClassVar, NoReturn

__all__ = ["RedactedStruct", "Secret"]


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


class _Redacted:
    """Shown in place of a secret field (its repr is the bare word, also under rich)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<redacted>"


_REDACTED = _Redacted()


class RedactedStruct:
    """Mixin for the msgspec Structs that hold secrets in a node's sealed state (their bytes must
    stay encodable by msgspec, so they are not held as :class:`Secret`); put it first,
    ``class M(RedactedStruct, msgspec.Struct, ...)``. The fields named in ``__redacted__`` show as
    ``<redacted>`` in ``repr``, ``str`` and rich's ``__rich_repr__`` (msgspec's own
    ``__rich_repr__`` yields every field, so overriding ``__repr__`` alone left rich
    pretty-printing, rich tracebacks with locals and rich log handlers showing them)."""

    __slots__ = ()
    __redacted__: ClassVar[frozenset[str]] = frozenset()
    __struct_fields__: ClassVar[tuple[str, ...]]

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [(name, _REDACTED if name in self.__redacted__ else getattr(self, name))
                for name in self.__struct_fields__]

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"{type(self).__name__}({body})"

    __str__ = __repr__
