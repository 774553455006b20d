"""Check a serialized CKKS vector's framing before TenSEAL/SEAL parse it (issue 17).

TenSEAL serializes a ``CKKSVector`` as the protobuf ``CKKSVectorProto`` (tenseal/proto/
tensors.proto: ``repeated uint32 sizes = 1; repeated bytes ciphertexts = 2; double scale = 3``),
each ciphertext a SEAL blob with a 16-byte ``SEALHeader`` (SEAL 4.x native/src/seal/serialization.h:
u16 magic 0xA15E, u8 header size 16, u8 major, u8 minor, u8 compr_mode, u16 reserved, u64 size).

SEAL bounds each ciphertext by the context's parameters, but nothing bounds how many a vector
holds: measured, a 253 KB chunk carrying 1,900 zstd-compressed all-zero ciphertexts made
``ckks_vector_from`` allocate 1.48 GB (peak RSS) and run 2.6 s before securefl saw the value count
(tests/test_fuzz_ckks.py::test_many_ciphertexts_in_one_chunk_are_refused_before_seal). So a chunk
must hold exactly one ciphertext, one size equal to the expected value count, and a SEAL header
whose declared size is the blob's length; anything else is refused here, in Python, with
:class:`MalformedCiphertextError`.
"""

from __future__ import annotations

import struct

from securefl.he.errors import MalformedCiphertextError

__all__ = ["check_vector_framing"]

_SEAL_MAGIC = 0xA15E
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_COMPR_MODES = (0, 1, 2)  # none, zlib, zstd
_MAX_FIELDS = 8


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 64, 7):
        if pos >= len(data):
            raise MalformedCiphertextError("truncated ciphertext framing")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise MalformedCiphertextError("overlong varint in ciphertext framing")


def _fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level (field number, wire type, value) of a protobuf message, at most _MAX_FIELDS."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        if len(out) == _MAX_FIELDS:
            raise MalformedCiphertextError("too many fields in a ciphertext chunk")
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _varint(data, pos)
            out.append((number, wire_type, value))
        elif wire_type in (1, 2):
            if wire_type == 1:
                length = 8
            else:
                length, pos = _varint(data, pos)
            if length > len(data) - pos:
                raise MalformedCiphertextError("a ciphertext field runs past the chunk's end")
            out.append((number, wire_type, data[pos : pos + length]))
            pos += length
        else:
            raise MalformedCiphertextError(f"unexpected wire type {wire_type} in a ciphertext chunk")
    return out


def _packed(value: bytes) -> list[int]:
    out: list[int] = []
    pos = 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def check_vector_framing(chunk: bytes, num_values: int) -> None:
    """Raise :class:`MalformedCiphertextError` unless ``chunk`` is one CKKSVectorProto holding
    exactly one SEAL ciphertext of ``num_values`` values (see the module docstring)."""
    sizes: list[int] = []
    blobs: list[bytes] = []
    scales = 0
    for number, wire_type, value in _fields(chunk):
        if number == 1 and isinstance(value, bytes):
            sizes += _packed(value)
        elif number == 1 and isinstance(value, int):
            sizes.append(value)
        elif number == 2 and isinstance(value, bytes):
            blobs.append(value)
        elif number == 3 and wire_type == 1:
            scales += 1
        else:
            raise MalformedCiphertextError(f"unexpected field {number} in a ciphertext chunk")
    if len(blobs) != 1 or sizes != [num_values] or scales > 1:
        raise MalformedCiphertextError(
            f"a chunk must hold one ciphertext of {num_values} values, got {len(blobs)} "
            f"ciphertext(s) and {len(sizes)} size(s)")
    blob = blobs[0]
    if len(blob) < _SEAL_HEADER.size:
        raise MalformedCiphertextError("ciphertext shorter than its SEAL header")
    magic, header_size, _major, _minor, compr, _reserved, size = _SEAL_HEADER.unpack_from(blob)
    if (magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or compr not in _COMPR_MODES
            or size != len(blob)):
        raise MalformedCiphertextError("ciphertext has an invalid SEAL header")
