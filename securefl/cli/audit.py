"""``securefl audit verify|show|prove`` and ``securefl privacy report``: for auditors, from the run
directory alone (no data, no model training, no trust in the server's operator)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register_audit(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify, show or prove a run's tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)

    v = asub.add_parser(
        "verify", help="check every signature, proof, hash chain, file and result claim",
        description="Without a pinned server key (--key, --manifest or --pubkey) the key is taken "
        "from the run directory itself, which proves only internal consistency.")
    v.add_argument("run_dir", type=Path)
    _add_pin_args(v)
    v.add_argument("--json", action="store_true")
    v.set_defaults(handler=_verify)

    s = asub.add_parser("show", help="print the round records for people")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--round", type=int, dest="round_")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=_show)

    pr = asub.add_parser("prove", help="emit an inclusion proof of one round's record")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("--round", type=int, dest="round_", required=True)
    pr.add_argument("--json", action="store_true", help="(the proof is always JSON)")
    pr.set_defaults(handler=_prove)

    pv = asub.add_parser("check-proof", help="check a proof emitted by `audit prove`")
    pv.add_argument("proof", type=Path)
    pv.add_argument("--pubkey", required=True, help="the server's verifier key string or file")
    pv.add_argument("--json", action="store_true")
    pv.set_defaults(handler=_check_proof)


def _add_pin_args(p: argparse.ArgumentParser) -> None:
    pin = p.add_mutually_exclusive_group()
    pin.add_argument("--key", type=Path, metavar="FILE",
                     help="pin the server's public key: its identity file (NAME.pub.json from "
                          "`securefl keys init`), a PEM public key or a verifier key string")
    pin.add_argument("--manifest", type=Path, metavar="FILE",
                     help="pin the server key listed in a federation manifest signed by every "
                          "member (the deployment's manifest.json)")
    pin.add_argument("--pubkey", help="pin the server's verifier key string or a file holding it")


def register_report(sub: Any) -> None:
    r = sub.add_parser(
        "report", help="render a run's compliance report: one self-contained HTML file",
        description="Verifies the run directory first: every model number is read from the "
        "signed round records, every epsilon recomputed from the ledger. A directory that fails "
        "verification gets a report that says so at the top and shows none of its numbers (and "
        "the command exits with the verification error's code).")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--out", type=Path, metavar="FILE",
                   help="where to write the report (default RUN_DIR/report.html)")
    _add_pin_args(r)
    r.add_argument("--json", action="store_true", help="print the outcome as JSON")
    r.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from securefl.errors import exit_code_for
    from securefl.report import write_report

    if not args.run_dir.is_dir():
        from securefl.errors import AuditError

        raise AuditError(f"{args.run_dir} is not a run directory", hint="give the directory "
                         "`securefl run --out` or a deployment's server wrote")
    pubkey, source = _pinned(args)
    path, facts = write_report(args.run_dir, args.out, pubkey=pubkey, key_source=source)
    if args.json:
        print(json.dumps({"ok": facts.ok, "report": str(path), "error": facts.error.to_dict()
                          if facts.error is not None else None}, indent=2, sort_keys=True))
    elif facts.verified is not None:
        v = facts.verified
        print(f"report: {path} (verified against key {v.key_fingerprint}, "
              + ("pinned)" if v.key_pinned else "NOT pinned: internal consistency only)"))
    if facts.error is not None:
        err = facts.error
        import sys

        print(f"securefl: error {err.code}: {err.message}", file=sys.stderr)
        print(f"  report: {path} says VERIFICATION FAILED and shows none of the run's numbers",
              file=sys.stderr)
        return exit_code_for(err)
    return 0


def register_privacy(sub: Any) -> None:
    p = sub.add_parser("privacy", help="recompute (epsilon, delta) from a run's privacy ledger")
    psub = p.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)
    r = psub.add_parser("report", help="per bank and federation, record and client level")
    r.add_argument("run_dir", type=Path)
    r.add_argument("--accountant", choices=("rdp", "prv", "pld"), default="rdp")
    r.add_argument("--delta", type=float, default=None,
                   help="delta (default: the run's configured delta)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=_privacy_report)


def _pubkey(text: str | None) -> Any:
    if text is None:
        return None
    from securefl.audit.note import NoteVerifier

    path = Path(text)
    raw = path.read_text("utf-8").strip() if path.is_file() else text.strip()
    return NoteVerifier.from_string(raw).key


#: a public key file is a few hundred bytes; refuse to read anything much larger
_MAX_KEY_FILE = 64 * 1024


def _key_file(path: Path) -> tuple[Any, str]:
    """The Ed25519 public key in ``path`` (identity JSON, PEM or verifier key string) and a
    description of where it came from."""
    from securefl.audit.note import NoteVerifier
    from securefl.crypto.signing import VerifyKey
    from securefl.errors import ConfigError, CryptoError
    from securefl.federation import _read_bounded, load_identity

    text = _read_bounded(path, _MAX_KEY_FILE, "public key").strip()
    if text.startswith(b"{"):
        ident = load_identity(path)
        return ident.verify_key(), (f"--key {path} (identity of {ident.institution}, "
                                    f"role {ident.role})")
    if text.startswith(b"-----BEGIN PUBLIC KEY-----"):
        try:
            return VerifyKey.from_pem(text), f"--key {path} (PEM public key)"
        except CryptoError as exc:
            raise ConfigError(f"{path}: {exc.message}") from exc
    try:
        return NoteVerifier.from_string(text.decode("utf-8")).key, f"--key {path}"
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a public key file") from exc


def _manifest_key(path: Path) -> tuple[Any, str]:
    """The server member's key from a manifest every member signed (verified in full)."""
    from securefl.federation import Federation

    fed = Federation.load(path)
    return fed.verify_key(fed.server), (f"--manifest {path} (federation {fed.federation_id}, "
                                        f"server {fed.server}, manifest {fed.digest[:16]})")


def _pinned(args: argparse.Namespace) -> tuple[Any, str | None]:
    if args.key is not None:
        return _key_file(args.key)
    if args.manifest is not None:
        return _manifest_key(args.manifest)
    if args.pubkey is not None:
        return _pubkey(args.pubkey), "--pubkey"
    return None, None


def _verify(args: argparse.Namespace) -> int:
    from securefl.audit.verify import verify_run_dir

    pubkey, source = _pinned(args)
    report = verify_run_dir(args.run_dir, pubkey=pubkey, key_source=source)
    d = report.to_dict()
    if args.json:
        print(json.dumps({"ok": True, **d}, indent=2, sort_keys=True))
        return 0
    print(f"OK: {args.run_dir} verifies: {d['rounds_committed']} committed and "
          f"{d['rounds_aborted']} aborted rounds, tree size {d['tree_size']}, "
          f"root {d['root_hash']}, {d['ledger_lines']} ledger entries, "
          f"{len(d['files_checked'])} files checked")
    print(f"key: {report.key_fingerprint} from {report.key_source}")
    if report.has_result:
        checked = ", ".join(report.claims_checked) or "none"
        print(f"result.json claims re-derived from the log and ledger: {checked}"
              + (f"; not checkable: {', '.join(report.claims_unchecked)}"
                 if report.claims_unchecked else ""))
    if report.key_pinned:
        print(f"proves: {report.assurance}")
    else:
        print(f"WARNING: no server key pinned; this proves {report.assurance}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from securefl.audit.verify import show

    print(show(args.run_dir, args.round_))
    return 0


def _prove(args: argparse.Namespace) -> int:
    from securefl.audit.verify import prove

    print(json.dumps(prove(args.run_dir, args.round_), indent=2, sort_keys=True))
    return 0


def _check_proof(args: argparse.Namespace) -> int:
    import msgspec

    from securefl.audit.verify import verify_proof
    from securefl.errors import AuditError

    try:
        proof = json.loads(args.proof.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read the proof {args.proof}: {exc}") from exc
    record = verify_proof(proof, _pubkey(args.pubkey))
    out = msgspec.to_builtins(record)
    if args.json:
        print(json.dumps({"ok": True, "record": out}, indent=2, sort_keys=True))
    else:
        print(f"OK: the record of round {out.get('round', 0)} is in the signed log")
    return 0


def _privacy_report(args: argparse.Namespace) -> int:
    from securefl.dp.ledger import Ledger
    from securefl.dp.report import format_report, privacy_report
    from securefl.errors import LedgerError

    ledger_path = args.run_dir / "ledger.jsonl"
    if not ledger_path.is_file():
        raise LedgerError(f"{ledger_path} does not exist", hint="is this a securefl run directory?")
    delta = args.delta
    if delta is None:
        try:
            delta = float(json.loads((args.run_dir / "config.json").read_text("utf-8"))["delta"])
        except (OSError, ValueError, KeyError) as exc:
            raise LedgerError("no --delta given and config.json has none") from exc
    report = privacy_report(Ledger.load(ledger_path), delta, args.accountant)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, allow_nan=False))
    else:
        print(format_report(report))
    return 0
