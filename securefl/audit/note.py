"""Signed notes (C2SP signed-note) carrying checkpoints (C2SP tlog-checkpoint), with Ed25519.

Formats (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint; the same as
golang.org/x/mod/sumdb/note):

- checkpoint body: ``<origin>\\n<tree size, decimal>\\n<base64 root hash>\\n`` then optional
  extension lines; the note text is the body.
- signed note: ``<text>\\n`` then one line per signature
  ``— <key name> <base64(key hash || sig)>\\n`` where the key hash is the first 4 bytes of
  SHA-256(name || 0x0A || 0x01 || pubkey) (0x01 = Ed25519) and
  ``sig`` is the Ed25519 signature of the text.
- verifier key: ``<name>+<key hash, 8 hex>+<base64(0x01 || pubkey)>``.

Every encoding is parsed strictly and must be canonical (base64 with zero padding bits, decimal
without leading zeros, lowercase hex), so a single flipped byte never leaves the meaning unchanged.
Signing and verification go through :mod:`securefl.crypto.signing`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.errors import AuditError, CryptoError, SignatureError

__all__ = [
    "Checkpoint",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "OpenedNote",
    "b64decode_strict",
    "b64encode",
    "open_note",
    "parse_checkpoint",
    "sign_note",
]

ALG_ED25519 = 0x01
_SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
_MAX_SIGNATURES = 100
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")  # ASCII controls other than newline


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, *, what: str) -> bytes:
    """Standard base64 with padding; rejects any non-canonical spelling (e.g. nonzero pad bits)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise AuditError(f"{what} is not valid base64") from exc
    if b64encode(raw) != text:
        raise AuditError(f"{what} is not canonical base64")
    return raw


def _valid_name(name: str) -> bool:
    """signed-note key names: non-empty, no Unicode spaces, no '+'."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and all(
        ord(c) >= 0x20 for c in name
    )


def _key_hash(name: str, encoded_pubkey: bytes) -> bytes:
    """First 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey) (C2SP signed-note)."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + encoded_pubkey).digest()[:4]


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    key: VerifyKey

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise AuditError(f"invalid note key name {self.name!r}")

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, bytes([ALG_ED25519]) + self.key.raw)

    def to_string(self) -> str:
        """The verifier key string ``name+hash+base64(0x01||pubkey)``."""
        return f"{self.name}+{self.key_hash.hex()}+{b64encode(bytes([ALG_ED25519]) + self.key.raw)}"

    @classmethod
    def from_string(cls, vkey: str) -> NoteVerifier:
        """Parse a verifier key string; raise :class:`AuditError` if malformed or inconsistent."""
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise AuditError("malformed verifier key (want name+hash+key)")
        name, hash_hex, key_b64 = parts
        if not re.fullmatch(r"[0-9a-f]{8}", hash_hex):
            raise AuditError("malformed verifier key hash")
        encoded = b64decode_strict(key_b64, what="verifier key")
        if len(encoded) != 33 or encoded[0] != ALG_ED25519:
            raise AuditError("verifier key is not an Ed25519 key (0x01 || 32 bytes)")
        if not _valid_name(name):
            raise AuditError(f"invalid note key name {name!r}")
        if _key_hash(name, encoded) != bytes.fromhex(hash_hex):
            raise AuditError("verifier key hash does not match its name and key")
        try:
            key = VerifyKey(encoded[1:])
        except CryptoError as exc:
            raise AuditError("verifier key is not a valid Ed25519 point") from exc
        return cls(name, key)


@dataclass(frozen=True)
class NoteSigner:
    """A named Ed25519 private key that signs notes. Its repr shows only the public part."""

    name: str
    key: SigningKey

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise AuditError(f"invalid note key name {self.name!r}")

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(self.name, self.key.verify_key)

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, {self.key!r})"

    @classmethod
    def from_private_key_string(cls, skey: Secret) -> NoteSigner:
        """Parse ``PRIVATE+KEY+name+hash+base64(0x01||seed)`` (x/mod/sumdb/note; test vectors)."""
        try:
            text = skey.expose().decode("ascii")
        except UnicodeDecodeError as exc:
            raise AuditError("malformed private note key") from exc
        parts = text.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise AuditError("malformed private note key")
        name, hash_hex, key_b64 = parts[2:]
        encoded = b64decode_strict(key_b64, what="private note key")
        if len(encoded) != 33 or encoded[0] != ALG_ED25519:
            raise AuditError("private note key is not an Ed25519 seed")
        signer = cls(name, SigningKey.from_seed(Secret(encoded[1:], label="ed25519-seed")))
        if signer.verifier.key_hash.hex() != hash_hex:
            raise AuditError("private note key hash does not match")
        return signer


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def line(self) -> str:
        return f"{_SIG_PREFIX}{self.name} {b64encode(self.key_hash + self.signature)}\n"


@dataclass(frozen=True)
class OpenedNote:
    """A note whose text carries at least one verified signature."""

    text: str
    verified: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise AuditError("note text must end with a newline")
    if "\n\n" in text:
        raise AuditError("note text must not contain a blank line")
    if _CONTROL.search(text):
        raise AuditError("note text contains a control character")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` with each signer; return ``text + '\\n' + signature lines`` (UTF-8)."""
    _check_text(text)
    if not signers:
        raise AuditError("a note needs at least one signer")
    lines = []
    for s in signers:
        sig = s.key.sign(text.encode("utf-8"))
        lines.append(NoteSignature(s.name, s.verifier.key_hash, sig).line())
    return (text + "\n" + "".join(lines)).encode("utf-8")


def add_signatures(note: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Append co-signatures (e.g. a client's) to a signed note without changing its text."""
    text, sigs = _split(note)
    extra = "".join(
        NoteSignature(s.name, s.verifier.key_hash, s.key.sign(text.encode("utf-8"))).line()
        for s in signers
    )
    return (text + "\n" + "".join(x.line() for x in sigs) + extra).encode("utf-8")


def _split(note: bytes) -> tuple[str, list[NoteSignature]]:
    try:
        msg = note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AuditError("note is not valid UTF-8") from exc
    if _CONTROL.search(msg):
        raise AuditError("note contains a control character")
    split = msg.rfind("\n\n")
    if split < 0:
        raise AuditError("note has no signature block")
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block.endswith("\n"):
        raise AuditError("note signature block must end with a newline")
    _check_text(text)
    sigs: list[NoteSignature] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise AuditError("malformed note signature line")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _valid_name(name):
            raise AuditError("malformed note signature line")
        raw = b64decode_strict(b64, what="note signature")
        if len(raw) < 5:
            raise AuditError("note signature is too short")
        sigs.append(NoteSignature(name, raw[:4], raw[4:]))
        if len(sigs) > _MAX_SIGNATURES:
            raise AuditError("note has too many signatures")
    return text, sigs


def open_note(note: bytes, verifiers: Iterable[NoteVerifier]) -> OpenedNote:
    """Parse a signed note and check every signature by a known key (C2SP signed-note).

    Raises :class:`SignatureError` if a known key's signature is invalid, :class:`AuditError` if
    the note is malformed, a known key signed twice, or no known key signed it.
    """
    known = {(v.name, v.key_hash): v for v in verifiers}
    text, sigs = _split(note)
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, bytes]] = set()
    for s in sigs:
        v = known.get((s.name, s.key_hash))
        if v is None:
            unverified.append(s)
            continue
        if (s.name, s.key_hash) in seen:
            raise AuditError(f"note signed twice by {s.name}")
        seen.add((s.name, s.key_hash))
        try:
            v.key.verify(s.signature, text.encode("utf-8"))
        except SignatureError as exc:
            raise SignatureError(f"invalid note signature by {s.name}") from exc
        verified.append(s)
    if not verified:
        raise AuditError("note is not signed by any known key")
    return OpenedNote(text, tuple(verified), tuple(unverified))


@dataclass(frozen=True)
class Checkpoint:
    """A C2SP tlog-checkpoint: log origin, tree size and root hash (plus extension lines)."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or any(c.isspace() and c != " " for c in self.origin) or (
            self.origin.startswith(_SIG_PREFIX)
        ):
            raise AuditError("invalid checkpoint origin")
        if self.size < 0 or len(self.root_hash) != 32:
            raise AuditError("invalid checkpoint size or root hash")
        for e in self.extensions:
            if not e or "\n" in e:
                raise AuditError("invalid checkpoint extension line")

    def body(self) -> str:
        """The note text: origin, size, base64 root, extension lines; each ending in a newline."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "".join(line + "\n" for line in lines)

    def sign(self, signers: Sequence[NoteSigner]) -> bytes:
        return sign_note(self.body(), signers)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint body strictly (canonical decimal size and base64 root)."""
    _check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise AuditError("checkpoint has fewer than 3 lines")
    origin, size_s, root_s, *ext = lines
    if not _DECIMAL.fullmatch(size_s):
        raise AuditError("checkpoint tree size is not a canonical decimal")
    root = b64decode_strict(root_s, what="checkpoint root hash")
    if len(root) != 32:
        raise AuditError("checkpoint root hash is not 32 bytes")
    cp = Checkpoint(origin, int(size_s), root, tuple(ext))
    if cp.body() != text:
        raise AuditError("checkpoint is not canonical")
    return cp


def open_checkpoint(note: bytes, server: NoteVerifier, *, origin: str | None = None,
                    cosigners: Iterable[NoteVerifier] = ()) -> tuple[Checkpoint, OpenedNote]:
    """Open a signed checkpoint: the server's signature is required, known co-signatures checked."""
    opened = open_note(note, [server, *cosigners])
    if not any(s.name == server.name and s.key_hash == server.key_hash for s in opened.verified):
        raise AuditError(f"checkpoint is not signed by the log key {server.name}")
    cp = parse_checkpoint(opened.text)
    if origin is not None and cp.origin != origin:
        raise AuditError(f"checkpoint origin {cp.origin!r} is not the expected {origin!r}")
    return cp, opened
