"""The privacy ledger: an append-only, hash-chained list of privacy events, one JSON line per entry.

Each :class:`LedgerEntry` records one mechanism that released something (a bank's DP-SGD steps in a
round, or the federation's noised sum of a round), with who ran it (``party``), at which level, on
which neighbouring relation, and ``prev_hash`` = SHA-256 of the previous entry's canonical bytes
(``GENESIS_HASH`` for the first). ``seq`` counts entries from 0 without gaps. Hence a modified,
missing, reordered or duplicated entry breaks the chain and is reported by its position.

Canonical bytes: msgspec JSON with keys sorted, no whitespace, UTF-8; one entry per line in a ledger
file (``RUN_DIR/ledger.jsonl``). A loaded ledger keeps each line's bytes as read and chains over
them, so a line written by an older version (without fields added since) still verifies and is
re-saved byte for byte. The ledger never stores an epsilon: accountants recompute it.

Schema evolution: ``version`` is the entry schema version (currently 1); new fields are added with
defaults so old ledgers still decode; unknown fields and unknown event types are rejected.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from securefl.dp.events import (
    ComposedEvent,
    DistributedDiscreteGaussianEvent,
    Event,
    GaussianEvent,
    PoissonSampledEvent,
    SelfComposedEvent,
)
from securefl.errors import LedgerError, PrivacyError
from securefl.schema import json_schema as schema_of
from securefl.storage import atomic_write_bytes

__all__ = [
    "GENESIS_HASH",
    "LEDGER_VERSION",
    "Draft",
    "Ledger",
    "LedgerEntry",
    "NoiseSource",
    "canonical_bytes",
    "entry_hash",
]

LEDGER_VERSION = 1
_EVENT_TYPES = (GaussianEvent, DistributedDiscreteGaussianEvent, PoissonSampledEvent,
                SelfComposedEvent, ComposedEvent)
GENESIS_HASH = "0" * 64
#: one encoded entry may not exceed this (checked before decoding a line)
MAX_ENTRY_BYTES = 64 * 1024
#: a whole ledger file may not exceed this (checked before decoding)
MAX_LEDGER_BYTES = 256 * 1024 * 1024

_PARTY_PATTERN = "^(federation|bank:[A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
_PARTY_RE = re.compile(_PARTY_PATTERN)
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")

Level = Literal["record", "client"]
Neighbouring = Literal["add_remove", "replace"]
Sampling = Literal["poisson", "all", "fixed_size"]
#: where a mechanism's noise came from: "os_csprng" (the operating system's CSPRNG, what a
#: deployment uses), "torchcsprng" (Opacus' secure mode), "torch_prng" (torch's CPU generator, a
#: Mersenne Twister: not cryptographic), "seeded_chacha20" (``securefl run``'s reproducible
#: simulation: ChaCha20 streams keyed by the run seed, predictable to whoever knows it)
NoiseSource = Literal["os_csprng", "torchcsprng", "torch_prng", "seeded_chacha20", "declared"]


class LedgerEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One committed ledger line (see the module docstring for the chain rules).

    Fields: ``seq`` position from 0; ``round`` FL round (>= 0); ``level`` "record" (DP-SGD inside a
    bank) or "client" (DP-FedAvg on the sum); ``party`` "bank:<name>" or "federation"; ``event`` the
    mechanism; ``clip_norm`` the L2 clip (model units, > 0); ``participants`` parties asked to take
    part; ``survivors`` parties whose contribution is in the released value; ``neighbouring``
    "add_remove" or "replace"; ``sampling`` how records/clients were selected; ``steps`` mechanism
    invocations in this entry; ``prev_hash`` hex SHA-256 of the previous entry's canonical bytes;
    ``colluders`` (client level) the banks assumed to collude with the server, whose own noise
    shares they can subtract: ``event`` is then the mechanism the honest shares alone carry;
    ``noise_source`` where the noise came from (:data:`NoiseSource`; None in entries written before
    it was recorded). Both are optional (schema evolution): older lines decode with 0 and None.
    """

    version: int = LEDGER_VERSION
    seq: Annotated[int, msgspec.Meta(ge=0)]
    round: Annotated[int, msgspec.Meta(ge=0)]
    level: Level
    party: Annotated[str, msgspec.Meta(pattern=_PARTY_PATTERN)]
    event: Event
    clip_norm: Annotated[float, msgspec.Meta(gt=0.0)]
    participants: Annotated[int, msgspec.Meta(ge=1)]
    survivors: Annotated[int, msgspec.Meta(ge=1)]
    neighbouring: Neighbouring = "add_remove"
    sampling: Sampling = "poisson"
    steps: Annotated[int, msgspec.Meta(ge=0)] = 1
    colluders: Annotated[int, msgspec.Meta(ge=0)] = 0
    noise_source: NoiseSource | None = None
    prev_hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]

    def __post_init__(self) -> None:
        where = f"ledger entry seq={self.seq!r}"
        if not isinstance(self.event, _EVENT_TYPES):
            raise LedgerError(f"{where}: event must be a securefl.dp.events event, "
                              f"got {type(self.event).__name__}")
        if self.version != LEDGER_VERSION:
            raise LedgerError(f"{where}: unsupported version {self.version!r} "
                              f"(this build reads version {LEDGER_VERSION})")
        for name in ("seq", "round", "steps", "colluders"):
            _check_int(where, name, getattr(self, name), 0)
        if self.colluders and (self.level != "client" or self.colluders >= self.survivors):
            raise LedgerError(f"{where}: colluders ({self.colluders}) must be 0 at record level "
                              f"and below the survivors ({self.survivors}) at client level")
        _check_int(where, "participants", self.participants, 1)
        _check_int(where, "survivors", self.survivors, 1)
        if self.survivors > self.participants:
            raise LedgerError(f"{where}: survivors ({self.survivors}) > participants "
                              f"({self.participants})")
        if isinstance(self.clip_norm, bool) or not isinstance(self.clip_norm, int | float) or \
                not math.isfinite(self.clip_norm) or self.clip_norm <= 0:
            raise LedgerError(f"{where}: clip_norm must be finite and > 0, got {self.clip_norm!r}")
        if not _PARTY_RE.match(self.party):
            raise LedgerError(f"{where}: party must be 'federation' or 'bank:<name>', "
                              f"got {self.party!r}")
        if self.level == "record" and not self.party.startswith("bank:"):
            raise LedgerError(f"{where}: record-level entries belong to a bank, got {self.party!r}")
        if not _HEX64_RE.match(self.prev_hash):
            raise LedgerError(f"{where}: prev_hash must be 64 lowercase hex digits")


class Draft(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An entry before the ledger assigns ``seq`` and ``prev_hash`` (see :meth:`Ledger.record`)."""

    round: int
    level: Level
    party: str
    event: Event
    clip_norm: float
    participants: int
    survivors: int
    neighbouring: Neighbouring = "add_remove"
    sampling: Sampling = "poisson"
    steps: int = 1
    colluders: int = 0
    noise_source: NoiseSource | None = None


def _check_int(where: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LedgerError(f"{where}: {name} must be an integer >= {low}, got {value!r}")


_ENCODER = msgspec.json.Encoder(order="sorted")
_DECODER = msgspec.json.Decoder(LedgerEntry)


def canonical_bytes(entry: LedgerEntry) -> bytes:
    """The entry's canonical encoding: JSON, keys sorted, no whitespace (one ledger line)."""
    return _ENCODER.encode(entry)


def entry_hash(entry: LedgerEntry) -> str:
    """Hex SHA-256 of the entry's canonical bytes: the next entry's ``prev_hash``."""
    return hashlib.sha256(canonical_bytes(entry)).hexdigest()


def _decode_line(line: bytes, lineno: int) -> LedgerEntry:
    if len(line) > MAX_ENTRY_BYTES:
        raise LedgerError(f"ledger line {lineno}: {len(line)} bytes exceeds {MAX_ENTRY_BYTES}")
    try:
        entry: LedgerEntry = _DECODER.decode(line)
    except LedgerError as exc:
        raise LedgerError(f"ledger line {lineno}: {exc.message}") from exc
    except PrivacyError as exc:
        raise LedgerError(f"ledger line {lineno}: invalid event: {exc.message}") from exc
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise LedgerError(f"ledger line {lineno}: {exc}") from exc
    return entry


class Ledger:
    """In-memory append-only privacy ledger with a verified hash chain."""

    __slots__ = ("_entries", "_head", "_lines")

    def __init__(self, entries: Iterable[LedgerEntry] = ()) -> None:
        self._entries: list[LedgerEntry] = []
        self._lines: list[bytes] = []
        self._head = GENESIS_HASH
        self.append(list(entries))

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        return tuple(self._entries)

    @property
    def head_hash(self) -> str:
        """``prev_hash`` the next entry must carry."""
        return self._head

    def __len__(self) -> int:
        return len(self._entries)

    def seal(self, drafts: Sequence[Draft]) -> list[LedgerEntry]:
        """Chain ``drafts`` after the current head (assign seq, prev_hash); nothing is recorded."""
        out: list[LedgerEntry] = []
        head, seq = self._head, len(self._entries)
        for d in drafts:
            try:
                e = LedgerEntry(seq=seq, prev_hash=head, **msgspec.structs.asdict(d))
            except LedgerError:
                raise
            except PrivacyError as exc:
                raise LedgerError(f"draft for ledger entry seq={seq}: {exc.message}") from exc
            out.append(e)
            head, seq = entry_hash(e), seq + 1
        return out

    def record(self, drafts: Sequence[Draft]) -> list[LedgerEntry]:
        """Seal and append ``drafts`` atomically (all or none); returns the committed entries."""
        entries = self.seal(drafts)
        self.append(entries)
        return entries

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Validate every entry against the chain first, then record all of them (or none)."""
        self._append(entries, None)

    def _append(self, entries: Sequence[LedgerEntry], lines: Sequence[bytes] | None) -> None:
        head, seq = self._head, len(self._entries)
        new_lines: list[bytes] = []
        last_round = self._entries[-1].round if self._entries else 0
        for e in entries:
            if not isinstance(e, LedgerEntry):
                raise LedgerError(f"ledger entry {seq}: expected LedgerEntry, "
                                  f"got {type(e).__name__}")
            if e.seq != seq:
                kind = "duplicated or out of order" if e.seq < seq else "missing entries before it"
                raise LedgerError(f"ledger entry seq={e.seq}: expected seq={seq} ({kind})")
            if e.prev_hash != head:
                raise LedgerError(f"ledger entry seq={e.seq}: prev_hash does not match the "
                                  "previous entry (tampered, missing or reordered entry)")
            if e.round < last_round:
                raise LedgerError(f"ledger entry seq={e.seq}: round {e.round} after round "
                                  f"{last_round} (out of order)")
            line = canonical_bytes(e) if lines is None else lines[len(new_lines)]
            new_lines.append(line)
            head, seq, last_round = hashlib.sha256(line).hexdigest(), seq + 1, e.round
        self._entries.extend(entries)
        self._lines.extend(new_lines)
        self._head = head

    # --- bytes and files -------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """All entries, canonical JSON, one per line (each line ends with a newline)."""
        return b"".join(line + b"\n" for line in self._lines)

    @classmethod
    def from_bytes(cls, data: bytes) -> Ledger:
        """Strictly decode and verify a ledger (LedgerError naming the first bad line/entry)."""
        if len(data) > MAX_LEDGER_BYTES:
            raise LedgerError(f"ledger of {len(data)} bytes exceeds {MAX_LEDGER_BYTES}")
        if data and not data.endswith(b"\n"):
            raise LedgerError("ledger does not end with a newline (torn last line)")
        ledger = cls()
        for i, line in enumerate(data.split(b"\n")[:-1] if data else []):
            entry = _decode_line(line, i + 1)
            ledger._append([entry], [line])
        return ledger

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ledger:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > MAX_LEDGER_BYTES:
                    raise LedgerError(f"{p}: {size} bytes exceeds {MAX_LEDGER_BYTES}")
                data = fh.read(size)  # read(n) allocates n bytes up front
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger {p}: {exc.strerror}") from exc
        return cls.from_bytes(data)


def json_schema() -> dict[str, Any]:
    """JSON Schema of one ledger line (generated from :class:`LedgerEntry`; kept in protocols/)."""
    schema: dict[str, Any] = schema_of(LedgerEntry)
    schema["$comment"] = (f"securefl privacy ledger entry, schema version {LEDGER_VERSION}; "
                          "generated by protocols/ledger/generate.py, do not edit")
    return schema
