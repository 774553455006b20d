"""The federation manifest: who takes part, with which Ed25519 identity key and role, under which
protocol parameters — signed by EVERY member.

The manifest is the federation's PKI (DESIGN.md section 2: "Sybil identities at enrolment" are
out of scope because the manifest fixes the identities). It is valid only when each member listed
in it has signed the same canonical body, so no single party — in particular not the aggregation
server — can add, drop or re-key a member, or change a protocol parameter, without every
institution noticing.

Canonical body (the signed bytes): the JSON encoding of :class:`ManifestBody` with object keys
sorted and no whitespace (``msgspec.json.encode(body, order="sorted")``; floats in shortest
round-trip form).
Each signature is :func:`securefl.crypto.signing.sign_bound` over those bytes with
``domain = MANIFEST_DOMAIN``, ``session_id = federation_id`` (UTF-8) and ``round_ = version``, so a
manifest signature can never be replayed as any other securefl signature.
The language-neutral spec is protocols/federation/README.md.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import Meta

from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound, verify_bound
from securefl.errors import ConfigError, MessageError, SignatureError

if TYPE_CHECKING:
    from securefl.protocol.plan import RoundPlanner
    from securefl.protocol.secagg.bounds import Assumptions

__all__ = [
    "DEFAULT_MAX_SESSIONS",
    "MANIFEST_DOMAIN",
    "MANIFEST_VERSION",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
    "MAX_SESSIONS_LIMIT",
    "Federation",
    "ManifestBody",
    "Member",
    "MemberSignature",
    "ProtocolParams",
    "PublicIdentity",
    "Role",
    "SignedManifest",
    "canonical_body",
    "create_manifest",
    "decode_manifest",
    "encode_identity",
    "encode_manifest",
    "load_identity",
    "load_manifest",
    "load_signing_key",
    "manifest_digest",
    "missing_signers",
    "public_identity",
    "read_private_file",
    "sign_manifest",
    "verify_manifest",
]

#: 2: the params state the federation's assumptions (colluders, dropouts, security parameter,
#: field precision) from which SecAgg's thresholds follow; 3: they also cap the deployment
#: sessions (``max_sessions``) and their rounds (``max_rounds``), fix the client fraction
#: (``clients_per_round``) and may pin the data schema (``data_schema``). Earlier versions are
#: refused with a reason
MANIFEST_VERSION = 3
#: default cap on a manifest's deployment sessions: with max_rounds it caps the graphs of the
#: manifest's life, max_sessions * (max_rounds + 1), which the SecAgg+ degree is derived for
#: (protocols/secagg/spec.md section 12.1)
DEFAULT_MAX_SESSIONS = 256
#: the largest session cap a manifest may state (each session is one more union-bound term)
MAX_SESSIONS_LIMIT = 65536
#: default cap on a session's round numbers (``max_rounds``): every bank refuses a plan with more
#: rounds. The graphs of a manifest's life are at most max_sessions * (max_rounds + 1), and the
#: SecAgg+ degree is derived so that all of them together fail with probability <= 2^-sigma
#: (ProtocolParams.assumptions, protocols/secagg/spec.md section 12.1)
DEFAULT_MAX_ROUNDS = 1000
#: the largest round cap a manifest may state (the run configuration's own limit on rounds)
MAX_ROUNDS_LIMIT = 100_000
#: domain label of manifest signatures (separates them from every other securefl signature).
MANIFEST_DOMAIN = "securefl/federation-manifest"
MAX_MEMBERS = 1024
#: upper bound of an encoded manifest file, checked before parsing (~250 bytes per member + sig).
MAX_MANIFEST_BYTES = 1024 * 1024

Role = Literal["client", "server", "ckks-key-holder"]
ROLES: tuple[str, ...] = ("client", "server", "ckks-key-holder")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Meta(pattern=NAME_PATTERN)]
FederationId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
KeyHex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
SigHex = Annotated[str, Meta(pattern=r"^[0-9a-f]{128}$")]


class Member(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One party: institution name, role and Ed25519 public key (32 bytes, lowercase hex)."""

    name: Name
    role: Role
    public_key: KeyHex


class ProtocolParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Parameters every member agrees to by signing (units: clip_norm is an L2 norm; noise std of
    the sum is noise_multiplier * clip_norm)."""

    aggregation: Literal["secagg", "ckks"]
    threshold: Annotated[int, Meta(ge=2, le=MAX_MEMBERS)]
    neighbours: Annotated[int, Meta(ge=1, le=MAX_MEMBERS)] | None = None
    clip_norm: Annotated[float, Meta(gt=0.0, le=1e6)] = 1.0
    noise_multiplier: Annotated[float, Meta(ge=0.0, le=1e3)] = 1.0
    #: banks that may collude with the server (static corruption); SecAgg thresholds follow from
    #: it (protocols/secagg/spec.md, "Threat model and bounds")
    colluders: Annotated[int, Meta(ge=0, le=MAX_MEMBERS)] = 0
    #: fraction of a round's participants whose dropping it must survive (None: the most the
    #: active-security bound 2T > n + c allows)
    dropout_fraction: Annotated[float, Meta(ge=0.0, lt=1.0)] | None = None
    #: graph-based SecAgg+ guarantees fail with probability <= 2^-security_bits per round
    security_bits: Annotated[int, Meta(ge=16, le=128)] = 40
    #: SecAgg field precision: an update is quantized in steps of clip_norm / 2^precision_bits
    precision_bits: Annotated[int, Meta(ge=1, le=30)] = 16
    #: deployment sessions this manifest allows: every bank refuses a session counter above it,
    #: which caps the session ids (hence the graphs) a server can choose among over the
    #: manifest's life (protocols/secagg/spec.md section 12.1)
    max_sessions: Annotated[int, Meta(ge=1, le=MAX_SESSIONS_LIMIT)] = DEFAULT_MAX_SESSIONS
    #: round numbers per deployment session: every bank refuses a plan with more rounds (with
    #: max_sessions it caps the graphs of the manifest's life, spec section 12.1)
    max_rounds: Annotated[int, Meta(ge=1, le=MAX_ROUNDS_LIMIT)] = DEFAULT_MAX_ROUNDS
    #: the fraction q of the clients each training round draws (the public draw of spec section
    #: 12.1): every bank refuses a plan with another q, so the server cannot pick the draw size
    clients_per_round: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    #: SHA-256 (lowercase hex) of the federation's data schema, carried and signed. No securefl
    #: bank can check it yet: a bank whose manifest pins one refuses to run (ConfigError)
    data_schema: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None

    def assumptions(self) -> Assumptions:
        """The SecAgg assumptions these parameters state (protocol.secagg.bounds)."""
        from securefl.protocol.secagg.bounds import Assumptions

        return Assumptions(colluders=self.colluders, dropout_fraction=self.dropout_fraction,
                           security_bits=self.security_bits, graphs=self.lifetime_graphs)

    def round_threshold(self, n: int) -> int:
        """The one threshold T of a training round over ``n`` participants: the assumptions' rule
        for n (protocol.secagg.bounds.threshold_for), never below the manifest's ``threshold``,
        at most n. Every bank checks the signed T (and min_survivors) equals it, so the server
        has no choice of T and hence of the SecAgg+ degree k and neighbour threshold t that
        follow from it: one graph per (session, round), as :attr:`lifetime_graphs` counts
        (protocols/secagg/spec.md section 12.1, red-team finding S6b-4)."""
        from securefl.protocol.plan import round_threshold

        return round_threshold(n, self.assumptions(), floor=self.threshold)

    def planner(self, session: bytes, *, clip_norm: float | None = None,
                noise_multiplier: float | None = None, degree: int | None = None
                ) -> RoundPlanner:
        """The round planner (securefl.protocol.plan.RoundPlanner) of a session under these
        parameters: the manifest's assumptions, threshold floor and SecAgg+ degree, with the
        clip, noise multiplier and degree a plan signs (default: the manifest's)."""
        from securefl.protocol.plan import RoundPlanner

        return RoundPlanner(
            session_id=session,
            clip_norm=self.clip_norm if clip_norm is None else clip_norm,
            noise_multiplier=(self.noise_multiplier if noise_multiplier is None
                              else noise_multiplier),
            aggregation=self.aggregation, assumptions=self.assumptions(),
            degree=self.neighbours if degree is None else degree, floor=self.threshold)

    @property
    def lifetime_graphs(self) -> int:
        """The most SecAgg graphs this manifest's deployments can ever draw: one per (session,
        round) for max_sessions sessions of rounds 0..max_rounds (a retry is a new round). The
        SecAgg+ degree is derived so that their union bound stays <= 2^-security_bits."""
        return self.max_sessions * (self.max_rounds + 1)


class ManifestBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The signed part of a manifest."""

    version: Literal[3]
    federation_id: FederationId
    members: Annotated[list[Member], Meta(min_length=2, max_length=MAX_MEMBERS)]
    params: ProtocolParams


class MemberSignature(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``member``'s Ed25519 signature (64 bytes, lowercase hex) over the canonical body."""

    member: Name
    signature: SigHex


class SignedManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A manifest file: the body plus zero or more member signatures (complete when all signed)."""

    body: ManifestBody
    signatures: Annotated[list[MemberSignature], Meta(max_length=MAX_MEMBERS)] = []


# --- encoding -------------------------------------------------------------------------------------
def canonical_body(body: ManifestBody) -> bytes:
    """The exact bytes every member signs: sorted keys, no whitespace, UTF-8 JSON."""
    return msgspec.json.encode(body, order="sorted")


def manifest_digest(body: ManifestBody) -> str:
    """sha256 of the canonical body, hex: names this federation in run records and audit logs."""
    return hashlib.sha256(canonical_body(body)).hexdigest()


def encode_manifest(manifest: SignedManifest) -> bytes:
    """Human-readable manifest file (indented, sorted keys, trailing newline)."""
    return msgspec.json.format(msgspec.json.encode(manifest, order="sorted"), indent=2) + b"\n"


def decode_manifest(data: bytes) -> SignedManifest:
    """Parse a manifest file after a size check; raise :class:`MessageError` on anything malformed
    and :class:`ConfigError` when the body breaks a structural rule (see :func:`check_body`)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise MessageError(
            f"manifest of {len(data)} bytes exceeds the limit of {MAX_MANIFEST_BYTES} bytes"
        )
    try:
        manifest = msgspec.json.decode(data, type=SignedManifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        old = _declared_version(data)
        if old in _OLD_VERSIONS:
            raise ConfigError(
                f"this is a version {old} federation manifest; version {MANIFEST_VERSION} "
                f"{_OLD_VERSIONS[old]}",
                hint="create a new manifest (`securefl federation create`) and have every member "
                     "sign it again") from exc
        raise MessageError(f"malformed federation manifest: {exc}") from exc
    check_body(manifest.body)
    return manifest


#: what each refused manifest version lacks, named in the refusal
_OLD_VERSIONS = {
    1: "states the federation's assumptions (colluders, dropout_fraction, security_bits, "
       "precision_bits) from which SecAgg's thresholds follow, and caps the deployment sessions "
       "(max_sessions)",
    2: "adds max_sessions (the cap on the deployment sessions every bank enforces, which bounds "
       "the graphs a server can choose among over the manifest's life) and data_schema (the "
       "SHA-256 of the data schema, signed), and max_rounds and clients_per_round (the round "
       "cap and the draw fraction every bank enforces)",
}


class _VersionOnly(msgspec.Struct):
    version: int


class _BodyVersion(msgspec.Struct):
    body: _VersionOnly


def _declared_version(data: bytes) -> int | None:
    """The body's version field alone (unknown fields ignored), or None when unreadable."""
    try:
        return msgspec.json.decode(data, type=_BodyVersion).body.version
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


def load_manifest(path: str | Path) -> SignedManifest:
    """Read and decode a manifest file (signatures are NOT checked: use :func:`verify_manifest`)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the federation manifest {p}: {exc.strerror}") from exc
    return decode_manifest(data)


# --- structure ------------------------------------------------------------------------------------
def check_body(body: ManifestBody) -> None:
    """Structural rules beyond the types; raise :class:`ConfigError` naming the first broken one.

    Unique names; unique public keys (one key in two roles would let one party sign for two);
    exactly one server; one CKKS key holder for ``ckks``, none for ``secagg``;
    2 <= threshold <= number of clients; SecAgg+ neighbours <= clients - 1; colluders leave >= 2
    honest clients and threshold >= colluders + 2; ckks refused when any bank may collude.
    """
    names = [m.name for m in body.members]
    dup = _first_duplicate(names)
    if dup is not None:
        raise ConfigError(f"member name {dup!r} appears twice in the manifest")
    dup_key = _first_duplicate(m.public_key for m in body.members)
    if dup_key is not None:
        raise ConfigError(f"public key {dup_key[:16]}... is listed for two members",
                          hint="each party needs its own identity key (`securefl keys init`)")
    servers = [m.name for m in body.members if m.role == "server"]
    if len(servers) != 1:
        raise ConfigError(f"a federation has exactly one server, this manifest has {len(servers)}")
    holders = [m.name for m in body.members if m.role == "ckks-key-holder"]
    p = body.params
    if p.aggregation == "ckks" and len(holders) != 1:
        raise ConfigError("aggregation ckks needs exactly one ckks-key-holder member")
    if p.aggregation == "secagg" and holders:
        raise ConfigError("aggregation secagg takes no ckks-key-holder member")
    n_clients = sum(1 for m in body.members if m.role == "client")
    if p.threshold > n_clients:
        raise ConfigError(f"threshold {p.threshold} exceeds the {n_clients} clients")
    if p.aggregation == "ckks" and p.colluders > 0:
        raise ConfigError(
            f"aggregation ckks with colluders = {p.colluders}: ckks protects updates only while "
            "every bank encrypts honestly (a malformed ciphertext can extract the key holder's "
            "secret key from the release; no practical proof of well-formed RLWE encryption "
            "exists in Python today), so it cannot be used when any bank may collude",
            hint="use aggregation secagg, whose thresholds follow from the colluders")
    if p.colluders > max(0, n_clients - 2):
        raise ConfigError(f"colluders = {p.colluders} leaves fewer than 2 honest banks among "
                          f"the {n_clients} clients")
    if p.aggregation == "secagg" and p.threshold < p.colluders + 2:
        raise ConfigError(f"threshold {p.threshold} with {p.colluders} colluders lets a sum hold "
                          f"a single honest input: it must be >= colluders + 2 = "
                          f"{p.colluders + 2}")
    if p.neighbours is not None:
        if p.aggregation != "secagg":
            raise ConfigError("neighbours applies to aggregation secagg only")
        if p.neighbours > n_clients - 1:
            raise ConfigError(f"neighbours {p.neighbours} exceeds clients - 1 = {n_clients - 1}")


def _first_duplicate(items: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def create_manifest(
    federation_id: str, members: Sequence[Member], params: ProtocolParams
) -> SignedManifest:
    """Assemble an unsigned manifest; raise :class:`ConfigError` if it breaks a rule."""
    try:
        body = msgspec.convert(
            {"version": MANIFEST_VERSION, "federation_id": federation_id,
             "members": [msgspec.to_builtins(m) for m in members],
             "params": msgspec.to_builtins(params)},
            type=ManifestBody,
        )
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid federation manifest: {exc}") from exc
    check_body(body)
    return SignedManifest(body=body, signatures=[])


# --- signatures -----------------------------------------------------------------------------------
def _member(body: ManifestBody, name: str) -> Member:
    for m in body.members:
        if m.name == name:
            return m
    raise SignatureError(f"{name!r} is not a member of federation {body.federation_id!r}",
                         hint="only keys listed in the manifest can sign it")


def sign_manifest(manifest: SignedManifest, member: str, key: SigningKey) -> SignedManifest:
    """Return ``manifest`` with ``member``'s signature added.

    Raise :class:`SignatureError` if ``member`` is not listed, if ``key`` is not the key listed for
    it, or if it already signed (re-signing the same body is refused, not silently merged).
    """
    body = manifest.body
    listed = _member(body, member)
    if key.verify_key.raw.hex() != listed.public_key:
        raise SignatureError(
            f"the key {key.verify_key.fingerprint()} is not the key listed for {member!r} "
            f"({VerifyKey(bytes.fromhex(listed.public_key)).fingerprint()})")
    if any(s.member == member for s in manifest.signatures):
        raise SignatureError(f"{member!r} has already signed this manifest")
    sig = sign_bound(key, domain=MANIFEST_DOMAIN, session_id=body.federation_id.encode("utf-8"),
                     round_=body.version, message=canonical_body(body))
    sigs = [*manifest.signatures, MemberSignature(member=member, signature=sig.hex())]
    sigs.sort(key=lambda s: s.member)
    return SignedManifest(body=body, signatures=sigs)


def _verify_present(manifest: SignedManifest) -> set[str]:
    """Verify every signature present; return the set of members that signed."""
    body = manifest.body
    message = canonical_body(body)
    session_id = body.federation_id.encode("utf-8")
    signed: set[str] = set()
    for s in manifest.signatures:
        if s.member in signed:
            raise SignatureError(f"{s.member!r} has two signatures in the manifest")
        listed = _member(body, s.member)
        verify_bound(VerifyKey(bytes.fromhex(listed.public_key)), bytes.fromhex(s.signature),
                     domain=MANIFEST_DOMAIN, session_id=session_id, round_=body.version,
                     message=message)
        signed.add(s.member)
    return signed


def missing_signers(manifest: SignedManifest) -> list[str]:
    """Members whose signature is absent, after verifying every signature that IS present."""
    check_body(manifest.body)
    signed = _verify_present(manifest)
    return [m.name for m in manifest.body.members if m.name not in signed]


def verify_manifest(manifest: SignedManifest) -> Federation:
    """Check the body's rules and that EVERY member signed it; return the :class:`Federation`.

    Raise :class:`ConfigError` for a structurally invalid body and :class:`SignatureError` for a
    missing, duplicated, foreign (signer not listed) or invalid signature.
    """
    missing = missing_signers(manifest)
    if missing:
        raise SignatureError(
            f"manifest of {manifest.body.federation_id!r} lacks the signature of "
            f"{', '.join(repr(x) for x in missing)}",
            hint="each member runs `securefl federation sign` on the same manifest file")
    return Federation(manifest)


class Federation:
    """A verified federation: identities, roles and parameters, read-only.

    Construct through :func:`verify_manifest` or :meth:`load` (which verify every signature).
    """

    __slots__ = ("_keys", "_manifest")

    def __init__(self, manifest: SignedManifest) -> None:
        self._manifest = manifest
        self._keys = {m.name: VerifyKey(bytes.fromhex(m.public_key))
                      for m in manifest.body.members}

    @classmethod
    def load(cls, path: str | Path) -> Federation:
        """Read ``path`` and verify it completely (all members' signatures)."""
        return verify_manifest(load_manifest(path))

    @property
    def manifest(self) -> SignedManifest:
        return self._manifest

    @property
    def federation_id(self) -> str:
        return self._manifest.body.federation_id

    @property
    def digest(self) -> str:
        """sha256 hex of the canonical body."""
        return manifest_digest(self._manifest.body)

    @property
    def params(self) -> ProtocolParams:
        return self._manifest.body.params

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._manifest.body.members)

    @property
    def clients(self) -> tuple[str, ...]:
        """Client names, in manifest order."""
        return tuple(m.name for m in self._manifest.body.members if m.role == "client")

    @property
    def server(self) -> str:
        return next(m.name for m in self._manifest.body.members if m.role == "server")

    @property
    def key_holder(self) -> str | None:
        return next((m.name for m in self._manifest.body.members
                     if m.role == "ckks-key-holder"), None)

    def role(self, member: str) -> Role:
        """``member``'s role; :class:`SignatureError` if it is not in the manifest."""
        return _member(self._manifest.body, member).role

    def verify_key(self, member: str) -> VerifyKey:
        """``member``'s identity key; :class:`SignatureError` if it is not in the manifest."""
        try:
            return self._keys[member]
        except KeyError:
            raise SignatureError(
                f"{member!r} is not a member of federation {self.federation_id!r}") from None

    def member_for_key(self, key: VerifyKey) -> str:
        """The member that owns ``key``; :class:`SignatureError` for a key not in the manifest."""
        for name, k in self._keys.items():
            if k == key:
                return name
        raise SignatureError(f"key {key.fingerprint()} is not in federation "
                             f"{self.federation_id!r}")

    def __repr__(self) -> str:
        return (f"Federation({self.federation_id!r}, {len(self.clients)} clients, "
                f"{self.params.aggregation}, digest={self.digest[:16]})")


def valid_name(name: str) -> bool:
    """Whether ``name`` is a valid member name (letters, digits, ``._-``; 1-64 chars)."""
    return re.fullmatch(NAME_PATTERN, name) is not None


# --- identity files -------------------------------------------------------------------------------
#: upper bound of a public identity file (a few hundred bytes in practice).
MAX_IDENTITY_BYTES = 4096
#: upper bound of a private key PEM (an encrypted Ed25519 PKCS#8 PEM is under 400 bytes).
MAX_KEY_FILE_BYTES = 16 * 1024


class PublicIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The public half of an identity, exported by ``securefl keys init`` and handed to whoever
    assembles the manifest. ``fingerprint`` = first 16 hex digits of sha256(public key)."""

    format: Literal["securefl-identity-v1"]
    institution: Name
    role: Role
    public_key: KeyHex
    fingerprint: Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]

    def verify_key(self) -> VerifyKey:
        """The key, after checking that ``fingerprint`` matches it (a typo'd file is caught)."""
        key = VerifyKey(bytes.fromhex(self.public_key))
        if key.fingerprint() != self.fingerprint:
            raise ConfigError(f"identity file of {self.institution!r}: the fingerprint does not "
                              "match the public key")
        return key

    def member(self) -> Member:
        self.verify_key()
        return Member(name=self.institution, role=self.role, public_key=self.public_key)


def public_identity(institution: str, role: str, key: VerifyKey) -> PublicIdentity:
    """Build the public identity record of ``key``; :class:`ConfigError` on a bad name or role."""
    try:
        return msgspec.convert(
            {"format": "securefl-identity-v1", "institution": institution, "role": role,
             "public_key": key.raw.hex(), "fingerprint": key.fingerprint()},
            type=PublicIdentity)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid identity: {exc}",
                          hint=f"names match {NAME_PATTERN}; roles are {', '.join(ROLES)}") from exc


def encode_identity(identity: PublicIdentity) -> bytes:
    return msgspec.json.format(msgspec.json.encode(identity, order="sorted"), indent=2) + b"\n"


def load_identity(path: str | Path) -> PublicIdentity:
    """Read a public identity file (size-checked, strict); :class:`ConfigError` if unusable."""
    data = _read_bounded(Path(path), MAX_IDENTITY_BYTES, "public identity")
    try:
        ident = msgspec.json.decode(data, type=PublicIdentity)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path} is not a securefl public identity: {exc}") from exc
    ident.verify_key()
    return ident


def load_signing_key(path: str | Path, passphrase: bytes | None = None) -> SigningKey:
    """Load a private identity key PEM.

    Refuses a key file readable by group or others (:class:`ConfigError`, like OpenSSH does);
    a wrong or missing passphrase raises :class:`~securefl.errors.CryptoError`.
    """
    data = read_private_file(path, MAX_KEY_FILE_BYTES, "private key")
    return SigningKey.from_pem(data, passphrase=passphrase)


def read_private_file(path: str | Path, limit: int, what: str) -> bytes:
    """Read a secret file of at most ``limit`` bytes; refuse one readable by group or others
    (:class:`ConfigError`, like OpenSSH does)."""
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {p}: {exc.strerror}") from exc
    if mode & 0o077:
        raise ConfigError(f"{what} file {p} has permissions {mode:o}; it must be private",
                          hint=f"chmod 600 {p}")
    return _read_bounded(p, limit, what)


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise ConfigError(f"{path} is larger than a {what} file can be ({limit} bytes)")
    return data
