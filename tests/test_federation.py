"""The signed federation manifest: every member must sign the same canonical body."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import ConfigError, CryptoError, MessageError, SignatureError
from securefl.federation import (
    MANIFEST_DOMAIN,
    MAX_MANIFEST_BYTES,
    Federation,
    ManifestBody,
    Member,
    MemberSignature,
    ProtocolParams,
    SignedManifest,
    canonical_body,
    create_manifest,
    decode_manifest,
    encode_identity,
    encode_manifest,
    load_identity,
    load_signing_key,
    missing_signers,
    public_identity,
    sign_manifest,
    verify_manifest,
)
from securefl.storage import atomic_write_bytes

NAMES = ("agg", "bank-a", "bank-b", "bank-c")


def _key(i: int) -> SigningKey:
    return SigningKey.from_seed(Secret(bytes([i + 1]) * 32))


KEYS = {name: _key(i) for i, name in enumerate(NAMES)}


def _members(names: tuple[str, ...] = NAMES) -> list[Member]:
    return [Member(name=n, role="server" if n == "agg" else "client",
                   public_key=KEYS[n].verify_key.raw.hex()) for n in names]


def _unsigned(threshold: int = 2) -> SignedManifest:
    return create_manifest("fed-1", _members(),
                           ProtocolParams(aggregation="secagg", threshold=threshold))


def _signed(order: tuple[str, ...] = NAMES) -> SignedManifest:
    m = _unsigned()
    for name in order:
        m = sign_manifest(m, name, KEYS[name])
    return m


def test_round_trip_through_file_bytes() -> None:
    data = encode_manifest(_signed())
    fed = verify_manifest(decode_manifest(data))
    assert fed.federation_id == "fed-1"
    assert fed.server == "agg"
    assert fed.clients == ("bank-a", "bank-b", "bank-c")
    assert fed.key_holder is None
    assert fed.params.threshold == 2 and fed.params.aggregation == "secagg"
    for name in NAMES:
        assert fed.verify_key(name) == KEYS[name].verify_key
        assert fed.member_for_key(KEYS[name].verify_key) == name
    assert fed.digest == hashlib.sha256(canonical_body(fed.manifest.body)).hexdigest()


def test_canonical_body_is_sorted_compact_json() -> None:
    # hand-written expected bytes: keys sorted at every level, no whitespace
    body = ManifestBody(version=3, federation_id="f", members=[
        Member(name="s", role="server", public_key="00" * 32),
        Member(name="c", role="client", public_key="11" * 32)],
        params=ProtocolParams(aggregation="secagg", threshold=2, clip_norm=0.5,
                              noise_multiplier=1.25))
    expected = (
        '{"federation_id":"f","members":['
        '{"name":"s","public_key":"' + "00" * 32 + '","role":"server"},'
        '{"name":"c","public_key":"' + "11" * 32 + '","role":"client"}],'
        '"params":{"aggregation":"secagg","clients_per_round":1.0,"clip_norm":0.5,'
        '"colluders":0,"data_schema":null,"dropout_fraction":null,"max_rounds":1000,'
        '"max_sessions":256,"neighbours":null,'
        '"noise_multiplier":1.25,"precision_bits":16,"security_bits":40,"threshold":2},'
        '"version":3}'
    ).encode()
    assert canonical_body(body) == expected


@pytest.mark.parametrize(("version", "names"), [
    (1, ["colluders", "security_bits", "max_sessions"]),
    (2, ["max_sessions", "data_schema", "max_rounds", "clients_per_round"]),
])
def test_an_older_manifest_is_refused_naming_what_the_current_version_adds(
        version: int, names: list[str]) -> None:
    import json

    old = json.dumps({"body": {"version": version, "federation_id": "f", "members": [],
                               "params": {"aggregation": "secagg", "threshold": 2,
                                          "colluders": 0, "security_bits": 40}},
                      "signatures": []}).encode()
    with pytest.raises(ConfigError, match=f"version {version} federation manifest") as err:
        decode_manifest(old)
    assert all(n in err.value.message for n in names)


@pytest.mark.parametrize(("params", "match"), [
    ({"max_sessions": 0}, "max_sessions"),
    ({"max_sessions": 65537}, "max_sessions"),
    ({"data_schema": "AB" * 32}, "data_schema"),
    ({"data_schema": "ab" * 31}, "data_schema"),
    ({"max_rounds": 0}, "max_rounds"),
    ({"max_rounds": 100_001}, "max_rounds"),
    ({"clients_per_round": 0.0}, "clients_per_round"),
    ({"clients_per_round": 1.5}, "clients_per_round"),
])
def test_session_cap_and_data_schema_are_validated(params: dict[str, object],
                                                   match: str) -> None:
    members = [Member(name="s", role="server", public_key="00" * 32)] + [
        Member(name=f"b{i}", role="client", public_key=f"{i + 1:02x}" * 32) for i in range(3)]
    body = {"version": 3, "federation_id": "f", "members": [msgspec.to_builtins(m)
                                                            for m in members],
            "params": {"aggregation": "secagg", "threshold": 2, **params}}
    with pytest.raises(MessageError, match=match):
        decode_manifest(msgspec.json.encode({"body": body, "signatures": []}))
    ok = create_manifest("f", members, ProtocolParams(aggregation="secagg", threshold=2,
                                                      max_sessions=65536,
                                                      data_schema="ab" * 32))
    assert ok.body.params.data_schema == "ab" * 32


@pytest.mark.parametrize(("params", "match"), [
    ({"aggregation": "ckks", "threshold": 2, "colluders": 1}, "ckks protects updates only while"),
    ({"aggregation": "secagg", "threshold": 2, "colluders": 1}, "colluders \\+ 2"),
    ({"aggregation": "secagg", "threshold": 3, "colluders": 2}, "fewer than 2 honest banks"),
])
def test_assumptions_below_the_bounds_are_refused(params: dict[str, object], match: str) -> None:
    members = [Member(name="s", role="server", public_key="00" * 32)] + [
        Member(name=f"b{i}", role="client", public_key=f"{i + 1:02x}" * 32) for i in range(3)]
    if params["aggregation"] == "ckks":
        members.append(Member(name="kh", role="ckks-key-holder", public_key="ee" * 32))
    with pytest.raises(ConfigError, match=match):
        create_manifest("f", members, ProtocolParams(**params))  # type: ignore[arg-type]


def test_signature_layout_verifies_independently_with_cryptography() -> None:
    # rebuild the signed message from the spec (protocols/federation/README.md), not from securefl
    m = _signed()
    body = json.dumps(msgspec.to_builtins(m.body), sort_keys=True, separators=(",", ":")).encode()
    d, sid = MANIFEST_DOMAIN.encode(), b"fed-1"
    message = (b"securefl-sig-v1\x00" + struct.pack(">H", len(d)) + d
               + struct.pack(">H", len(sid)) + sid + struct.pack(">Q", 3) + body)
    for s in m.signatures:
        pk = Ed25519PublicKey.from_public_bytes(KEYS[s.member].verify_key.raw)
        pk.verify(bytes.fromhex(s.signature), message)  # raises InvalidSignature if wrong


@settings(max_examples=20, deadline=None)
@given(st.permutations(NAMES))
def test_signing_order_does_not_matter(order: list[str]) -> None:
    assert _signed(tuple(order)) == _signed()


@settings(max_examples=20, deadline=None)
@given(st.sets(st.sampled_from(NAMES), max_size=len(NAMES) - 1))
def test_any_missing_signature_is_rejected(signers: set[str]) -> None:
    m = _unsigned()
    for name in sorted(signers):
        m = sign_manifest(m, name, KEYS[name])
    assert missing_signers(m) == [n for n in NAMES if n not in signers]
    with pytest.raises(SignatureError, match="lacks the signature"):
        verify_manifest(m)


def test_duplicated_signature_is_rejected() -> None:
    m = _signed()
    dup = SignedManifest(body=m.body, signatures=[*m.signatures, m.signatures[0]])
    with pytest.raises(SignatureError, match="two signatures"):
        verify_manifest(dup)
    with pytest.raises(SignatureError, match="already signed"):
        sign_manifest(m, "bank-a", KEYS["bank-a"])


def test_signature_by_key_not_in_manifest_is_rejected() -> None:
    m = _unsigned()
    outsider = _key(99)
    with pytest.raises(SignatureError, match="not the key listed"):
        sign_manifest(m, "bank-a", outsider)
    with pytest.raises(SignatureError, match="not a member"):
        sign_manifest(m, "mallory", outsider)
    # forge the file: bank-a's slot signed by the outsider, and a foreign signer "mallory"
    full = _signed()
    forged_sig = outsider.sign(canonical_body(full.body)).hex()
    forged = SignedManifest(body=full.body, signatures=[
        MemberSignature(member="bank-a", signature=forged_sig),
        *[s for s in full.signatures if s.member != "bank-a"]])
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_manifest(forged)
    foreign = SignedManifest(body=full.body, signatures=[
        *full.signatures, MemberSignature(member="mallory", signature=forged_sig)])
    with pytest.raises(SignatureError, match="not a member"):
        verify_manifest(foreign)


def test_signature_without_domain_binding_is_rejected() -> None:
    m = _signed()
    raw = KEYS["bank-b"].sign(canonical_body(m.body)).hex()  # plain Ed25519 over the body
    sigs = [MemberSignature(member=s.member, signature=raw if s.member == "bank-b" else s.signature)
            for s in m.signatures]
    with pytest.raises(SignatureError):
        verify_manifest(SignedManifest(body=m.body, signatures=sigs))


def test_tampered_body_is_rejected() -> None:
    m = _signed()
    raised = msgspec.structs.replace(m.body, params=msgspec.structs.replace(m.body.params,
                                                                            threshold=3))
    with pytest.raises(SignatureError):
        verify_manifest(SignedManifest(body=raised, signatures=m.signatures))
    # the same through the file: edit the text a reviewer would see
    text = encode_manifest(m).decode()
    assert '"threshold": 2' in text
    with pytest.raises(SignatureError):
        verify_manifest(decode_manifest(text.replace('"threshold": 2', '"threshold": 3').encode()))


def test_server_cannot_add_a_member() -> None:
    m = _signed()
    sybil = _key(50)
    grown = SignedManifest(
        body=msgspec.structs.replace(m.body, members=[
            *m.body.members,
            Member(name="sybil", role="client", public_key=sybil.verify_key.raw.hex())]),
        signatures=m.signatures)
    grown = sign_manifest(grown, "sybil", sybil)
    with pytest.raises(SignatureError):
        verify_manifest(grown)


def test_verify_key_of_unknown_member_raises() -> None:
    fed = verify_manifest(_signed())
    with pytest.raises(SignatureError, match="not a member"):
        fed.verify_key("mallory")
    with pytest.raises(SignatureError):
        fed.member_for_key(_key(77).verify_key)
    with pytest.raises(SignatureError):
        fed.role("mallory")


@pytest.mark.parametrize(("members", "params", "match"), [
    (lambda: [*_members(), _members(("bank-a",))[0]], {}, "appears twice"),
    (lambda: [*_members(), Member(name="bank-z", role="client",
                                  public_key=KEYS["bank-a"].verify_key.raw.hex())], {},
     "two members"),
    (lambda: [m if m.name != "bank-a" else Member(name="bank-a", role="server",
                                                  public_key=m.public_key)
              for m in _members()], {}, "exactly one server"),
    (lambda: _members(), {"aggregation": "ckks"}, "ckks-key-holder"),
    (lambda: _members(), {"threshold": 4}, "exceeds the 3 clients"),
    (lambda: _members(), {"neighbours": 3}, "neighbours"),
])
def test_structural_rules(members: object, params: dict[str, object], match: str) -> None:
    p = {"aggregation": "secagg", "threshold": 2, **params}
    with pytest.raises(ConfigError, match=match):
        create_manifest("fed-1", members(), ProtocolParams(**p))  # type: ignore[operator,arg-type]


def test_ckks_federation_has_a_key_holder() -> None:
    holder = _key(10)
    members = [*_members(), Member(name="kh", role="ckks-key-holder",
                                   public_key=holder.verify_key.raw.hex())]
    m = create_manifest("fed-2", members, ProtocolParams(aggregation="ckks", threshold=3))
    for name in NAMES:
        m = sign_manifest(m, name, KEYS[name])
    with pytest.raises(SignatureError, match="'kh'"):
        verify_manifest(m)
    assert verify_manifest(sign_manifest(m, "kh", holder)).key_holder == "kh"


def test_decoding_rejects_oversized_and_unknown_fields() -> None:
    with pytest.raises(MessageError, match="exceeds"):
        decode_manifest(b" " * (MAX_MANIFEST_BYTES + 1))
    obj = json.loads(encode_manifest(_signed()))
    obj["body"]["extra"] = 1
    with pytest.raises(MessageError):
        decode_manifest(json.dumps(obj).encode())
    obj = json.loads(encode_manifest(_signed()))
    obj["body"]["members"][0]["public_key"] = "ZZ" * 32
    with pytest.raises(MessageError):
        decode_manifest(json.dumps(obj).encode())


# --- identity files -------------------------------------------------------------------------------
def test_identity_file_round_trip_and_fingerprint_check(tmp_path: Path) -> None:
    key = _key(3)
    ident = public_identity("bank-a", "client", key.verify_key)
    assert ident.fingerprint == hashlib.sha256(key.verify_key.raw).hexdigest()[:16]
    path = tmp_path / "bank-a.pub.json"
    path.write_bytes(encode_identity(ident))
    assert load_identity(path) == ident
    obj = json.loads(path.read_text())
    obj["fingerprint"] = "0" * 16
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match="fingerprint"):
        load_identity(path)
    with pytest.raises(ConfigError):
        public_identity("bad name!", "client", key.verify_key)


def test_passphrase_protected_key(tmp_path: Path) -> None:
    key = _key(4)
    path = tmp_path / "k.key"
    atomic_write_bytes(path, key.to_pem(b"correct horse").expose(), mode=0o600)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_signing_key(path, b"correct horse").verify_key == key.verify_key
    with pytest.raises(CryptoError):
        load_signing_key(path, b"wrong horse")
    with pytest.raises(CryptoError):
        load_signing_key(path, None)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    atomic_write_bytes(path, _key(5).to_pem().expose(), mode=0o644)
    with pytest.raises(ConfigError, match="permissions 644") as err:
        load_signing_key(path)
    assert err.value.hint == f"chmod 600 {path}"


def test_federation_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_bytes(encode_manifest(_signed()))
    assert Federation.load(path).clients == ("bank-a", "bank-b", "bank-c")
    path.write_bytes(encode_manifest(_unsigned()))
    with pytest.raises(SignatureError):
        Federation.load(path)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, len(NAMES) - 1), st.integers(0, 127), st.sampled_from("0123456789abcdef"))
def test_any_changed_signature_digit_is_rejected(who: int, pos: int, digit: str) -> None:
    m = _signed()
    sig = m.signatures[who].signature
    if sig[pos] == digit:
        return
    changed = sig[:pos] + digit + sig[pos + 1:]
    sigs = [MemberSignature(member=s.member, signature=changed if i == who else s.signature)
            for i, s in enumerate(m.signatures)]
    with pytest.raises(SignatureError):
        verify_manifest(SignedManifest(body=m.body, signatures=sigs))
