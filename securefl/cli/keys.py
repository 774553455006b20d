"""``securefl keys`` and ``securefl federation``: identity keys and the signed federation manifest.

Wiring: the lead calls :func:`register_keys` and :func:`register_federation` with the top-level
``add_subparsers()`` object; each subcommand sets ``handler`` (``Namespace -> exit status``) and
raises :mod:`securefl.errors` types, which ``securefl.cli.main`` maps to exit codes.
Imports stay light: ``securefl.federation`` (msgspec + cryptography) loads inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from securefl.errors import ConfigError

ROLES = ("client", "server", "ckks-key-holder")


# --- registration ---------------------------------------------------------------------------------
def register_keys(sub: Any) -> None:
    """Add ``keys init`` to the subparsers object ``sub``."""
    p_keys = sub.add_parser("keys", help="create and inspect institution identity keys")
    ks = p_keys.add_subparsers(dest="keys_command", metavar="KEYS_COMMAND")
    p_init = ks.add_parser(
        "init", help="create an Ed25519 identity key (private PEM 0600 + public JSON)")
    p_init.add_argument("--institution", required=True,
                        help="member name as it will appear in the manifest (letters, digits, ._-)")
    p_init.add_argument("--role", choices=ROLES, default="client",
                        help="role in the federation (default: client)")
    p_init.add_argument("--out", required=True, metavar="DIR",
                        help="directory for NAME.key (private) and NAME.pub.json (public)")
    p_init.add_argument("--passphrase-file", metavar="FILE",
                        help="encrypt the private key with the passphrase in FILE")
    p_init.add_argument("--force", action="store_true", help="overwrite an existing key")
    p_init.add_argument("--json", action="store_true", help="print the public identity as JSON")
    p_init.set_defaults(handler=cmd_keys_init)
    p_ckks = ks.add_parser(
        "ckks", help="create a CKKS key holder's keys and export its signed public context")
    p_ckks.add_argument("--out", required=True, metavar="DIR",
                        help="directory for the key holder's files (secret ones mode 0600)")
    p_ckks.add_argument("--passphrase-file", metavar="FILE",
                        help="encrypt the key holder's Ed25519 key with the passphrase in FILE")
    p_ckks.add_argument("--json", action="store_true", help="print the file paths as JSON")
    p_ckks.set_defaults(handler=cmd_keys_ckks)
    p_keys.set_defaults(handler=_help_of(p_keys))


def cmd_keys_ckks(args: argparse.Namespace) -> int:
    """``securefl keys ckks``: the key holder keeps the secret context; it publishes the rest."""
    from securefl.keyholder import create_key_holder_keys

    passphrase = None
    if args.passphrase_file:
        passphrase = Path(args.passphrase_file).read_bytes().rstrip(b"\n")
    keys = create_key_holder_keys(args.out, passphrase=passphrase)
    paths = {k: str(getattr(keys, k))
             for k in ("signing_key", "secret_context", "public_context", "verify_key")}
    if args.json:
        print(json.dumps(paths, indent=2, sort_keys=True))
    else:
        print(f"CKKS key holder keys in {args.out}: keep {paths['signing_key']} and "
              f"{paths['secret_context']} secret; publish {paths['public_context']} and "
              f"{paths['verify_key']}")
    return 0


def register_federation(sub: Any) -> None:
    """Add ``federation create | sign | verify`` to the subparsers object ``sub``."""
    p_fed = sub.add_parser("federation", help="assemble, sign and verify the federation manifest")
    fs = p_fed.add_subparsers(dest="federation_command", metavar="FEDERATION_COMMAND")

    p_c = fs.add_parser("create", help="assemble an unsigned manifest from public identities")
    p_c.add_argument("--id", dest="federation_id", required=True, help="federation id")
    p_c.add_argument("--member", action="append", required=True, metavar="NAME:ROLE:PUBKEYFILE",
                     help="a member and its public identity file (repeat for every member)")
    p_c.add_argument("--threshold", type=int, required=True,
                     help="survivors needed for a round (>= 2, <= number of clients)")
    p_c.add_argument("--aggregation", choices=("secagg", "ckks"), required=True,
                     help="secagg (masking) | ckks (homomorphic, needs a ckks-key-holder)")
    p_c.add_argument("--neighbours", type=int, default=None,
                     help="SecAgg+ expected degree k (omit to derive it from the bounds)")
    p_c.add_argument("--colluders", type=int, default=0,
                     help="banks assumed to collude with the server (default 0); SecAgg "
                          "thresholds follow from it, ckks refuses any")
    p_c.add_argument("--dropout-fraction", type=float, default=None,
                     help="fraction of a round's banks whose dropping it must survive (default: "
                          "the most the bound 2T > n + c allows)")
    p_c.add_argument("--security-bits", type=int, default=40,
                     help="SecAgg+ graph guarantees fail with probability <= 2^-bits (default 40)")
    p_c.add_argument("--precision-bits", type=int, default=16,
                     help="SecAgg field precision: steps of clip / 2^bits (default 16)")
    p_c.add_argument("--max-sessions", type=int, default=None,
                     help="deployment sessions this manifest allows; every bank refuses a later "
                          "session counter (default 256)")
    p_c.add_argument("--max-rounds", type=int, default=None,
                     help="rounds per deployment session; every bank refuses a plan with more "
                          "(default 1000). The SecAgg+ degree covers max_sessions * (max_rounds "
                          "+ 1) graphs within 2^-security_bits")
    p_c.add_argument("--clients-per-round", type=float, default=None,
                     help="fraction of the clients each training round draws; every bank "
                          "refuses a plan with another (default 1)")
    p_c.add_argument("--data-schema", default=None, metavar="SHA256",
                     help="SHA-256 (hex) of the federation's data schema, signed; a bank of "
                          "this securefl cannot check it yet and refuses a manifest that pins one")
    p_c.add_argument("--clip-norm", type=float, default=1.0,
                     help="client-level L2 clip of each update (default 1.0)")
    p_c.add_argument("--noise-multiplier", type=float, default=1.0,
                     help="client-level noise multiplier z; sum noise std = z * clip (default 1.0)")
    p_c.add_argument("--out", required=True, metavar="FILE", help="manifest file to write")
    p_c.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    p_c.set_defaults(handler=cmd_federation_create)

    p_s = fs.add_parser("sign", help="add your institution's signature to a manifest (in place)")
    p_s.add_argument("manifest", help="manifest file")
    p_s.add_argument("--key", required=True, metavar="KEYFILE", help="your private key PEM")
    p_s.add_argument("--institution", required=True, help="your member name in the manifest")
    p_s.add_argument("--passphrase-file", metavar="FILE", help="passphrase of an encrypted key")
    p_s.add_argument("--out", metavar="FILE", help="write here instead of in place")
    p_s.set_defaults(handler=cmd_federation_sign)

    p_v = fs.add_parser("verify", help="check the manifest and that EVERY member signed it")
    p_v.add_argument("manifest", help="manifest file")
    p_v.add_argument("--json", action="store_true", help="print the summary as JSON")
    p_v.set_defaults(handler=cmd_federation_verify)
    p_fed.set_defaults(handler=_help_of(p_fed))


def _help_of(parser: argparse.ArgumentParser) -> Any:
    def show(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


# --- handlers -------------------------------------------------------------------------------------
def _read_passphrase(path: str | None) -> bytes | None:
    """The passphrase in ``path`` without its trailing newline; None when no file is given."""
    if path is None:
        return None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the passphrase file {path}: {exc.strerror}") from exc
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ConfigError(f"the passphrase file {path} is empty")
    return raw


def cmd_keys_init(args: argparse.Namespace) -> int:
    from securefl.crypto.signing import SigningKey
    from securefl.federation import encode_identity, public_identity
    from securefl.storage import atomic_write_bytes

    out = Path(args.out)
    passphrase = _read_passphrase(args.passphrase_file)
    key = SigningKey.generate()
    ident = public_identity(args.institution, args.role, key.verify_key)
    priv_path = out / f"{ident.institution}.key"
    pub_path = out / f"{ident.institution}.pub.json"
    for p in (priv_path, pub_path):
        if p.exists() and not args.force:
            raise ConfigError(f"{p} already exists; refusing to replace an identity key",
                              hint="pass --force only if the old key was never enrolled")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(priv_path, key.to_pem(passphrase).expose(), mode=0o600)
    atomic_write_bytes(pub_path, encode_identity(ident), mode=0o644)
    if args.json:
        print(json.dumps({"institution": ident.institution, "role": ident.role,
                          "public_key": ident.public_key, "fingerprint": ident.fingerprint,
                          "private_key_file": str(priv_path), "public_file": str(pub_path),
                          "encrypted": passphrase is not None}, indent=2, sort_keys=True))
    else:
        print(f"created identity {ident.institution} ({ident.role}), "
              f"fingerprint {ident.fingerprint}")
        print(f"  private key: {priv_path} (mode 0600"
              f"{', passphrase-encrypted' if passphrase else ', NOT encrypted'})")
        print(f"  public identity: {pub_path} (send this file to the federation's coordinator)")
    return 0


def _parse_member(spec: str) -> tuple[str, str, Path]:
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ConfigError(f"--member {spec!r} is not NAME:ROLE:PUBKEYFILE")
    name, role, path = parts
    if role not in ROLES:
        raise ConfigError(f"--member {spec!r}: role {role!r} is not one of {', '.join(ROLES)}")
    return name, role, Path(path)


def cmd_federation_create(args: argparse.Namespace) -> int:
    import msgspec

    from securefl.federation import (
        ProtocolParams,
        create_manifest,
        encode_manifest,
        load_identity,
        manifest_digest,
    )
    from securefl.storage import atomic_write_bytes

    members = []
    for spec in args.member:
        name, role, path = _parse_member(spec)
        ident = load_identity(path)
        if ident.institution != name or ident.role != role:
            raise ConfigError(
                f"--member {spec!r}: the identity file says {ident.institution}:{ident.role}")
        members.append(ident.member())
    try:
        params = msgspec.convert(
            {"aggregation": args.aggregation, "threshold": args.threshold,
             "neighbours": args.neighbours, "clip_norm": args.clip_norm,
             "noise_multiplier": args.noise_multiplier, "colluders": args.colluders,
             "dropout_fraction": args.dropout_fraction, "security_bits": args.security_bits,
             "precision_bits": args.precision_bits, "data_schema": args.data_schema,
             **{k: v for k, v in (("max_sessions", args.max_sessions),
                                  ("max_rounds", args.max_rounds),
                                  ("clients_per_round", args.clients_per_round))
                if v is not None}},
            type=ProtocolParams)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid protocol parameter: {exc}") from exc
    manifest = create_manifest(args.federation_id, members, params)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists", hint="pass --force to replace it")
    atomic_write_bytes(out, encode_manifest(manifest))
    print(f"wrote unsigned manifest {out} for {args.federation_id!r} "
          f"({len(members)} members, digest {manifest_digest(manifest.body)[:16]})")
    print("  next: every member runs `securefl federation sign` on this file")
    return 0


def cmd_federation_sign(args: argparse.Namespace) -> int:
    from securefl.federation import (
        encode_manifest,
        load_manifest,
        load_signing_key,
        manifest_digest,
        missing_signers,
        sign_manifest,
    )
    from securefl.storage import atomic_write_bytes

    manifest = load_manifest(args.manifest)
    missing_signers(manifest)  # refuse to add to a manifest whose present signatures are bad
    key = load_signing_key(args.key, _read_passphrase(args.passphrase_file))
    signed = sign_manifest(manifest, args.institution, key)
    out = Path(args.out) if args.out else Path(args.manifest)
    atomic_write_bytes(out, encode_manifest(signed))
    left = missing_signers(signed)
    print(f"{args.institution} signed manifest digest {manifest_digest(signed.body)[:16]} -> {out}")
    print(f"  still to sign: {', '.join(left)}" if left else "  all members have signed")
    return 0


def cmd_federation_verify(args: argparse.Namespace) -> int:
    import msgspec

    from securefl.federation import load_manifest, verify_manifest

    fed = verify_manifest(load_manifest(args.manifest))
    members = [{"name": m.name, "role": m.role,
                "fingerprint": fed.verify_key(m.name).fingerprint()} for m in fed.members]
    summary: dict[str, object] = {
        "federation_id": fed.federation_id, "digest": fed.digest,
        "server": fed.server, "clients": list(fed.clients), "key_holder": fed.key_holder,
        "params": msgspec.to_builtins(fed.params),
        "members": members,
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"manifest OK: {fed.federation_id!r}, digest {fed.digest}")
        print(f"  signed by all {len(fed.members)} members; aggregation {fed.params.aggregation},"
              f" threshold {fed.params.threshold}, colluders assumed {fed.params.colluders}")
        for m in members:
            print(f"  {m['name']:<24} {m['role']:<16} {m['fingerprint']}")
    sys.stdout.flush()
    return 0
