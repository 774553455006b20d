"""Fuzz targets: every decoder of bytes that come from another party or from a file an auditor is
handed, with valid seed encodings to mutate (issue 17, item 1).

Shared by the hypothesis fuzz tests (tests/test_fuzz_decoders.py) and the coverage-guided atheris
harness (tests/fuzz/fuzz_messages.py). A target is ``decode(data: bytes) -> None``; the contract
is that only :class:`securefl.errors.SecureFLError` subclasses may come out of it.

Seeds are built from the message types themselves (:func:`minimal_value` walks msgspec's type
info and fills every field with its smallest valid value) and from the committed vectors under
``protocols/`` (a run directory, a manifest, a ledger, a signed note), so mutations start from
inputs the decoder accepts and reach the checks behind the parser.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from securefl.errors import SecureFLError

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocols"
RUN_VECTOR = VECTORS / "audit" / "vectors" / "securefl_run"

Decoder = Callable[[bytes], object]


@dataclass(frozen=True)
class Target:
    """One decoder, its input format (``msgpack``, ``json``, ``toml`` or ``raw``) and seeds."""

    name: str
    decode: Decoder
    seeds: tuple[bytes, ...]
    fmt: str = "raw"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- valid values from msgspec type info ---------------------------------------------------------
_STRING_CANDIDATES = ("0" * 64, "bank0", "a", "0" * 32, "x" * 16, "secagg", "ckks", "client",
                      "server", "A" * 43 + "=", "1.0")


def _string_for(t: Any) -> str:
    lo = t.min_length or 0
    for cand in _STRING_CANDIDATES:
        if t.pattern is not None and not re.search(t.pattern, cand):
            continue
        if len(cand) < lo or (t.max_length is not None and len(cand) > t.max_length):
            continue
        return cand
    return "a" * max(lo, 1)


def _int_for(t: Any) -> int:
    if t.ge is not None:
        return int(t.ge)
    if t.gt is not None:
        return int(t.gt) + 1
    return 0 if t.le is None or t.le >= 0 else int(t.le)


def _float_for(t: Any) -> float:
    if t.ge is not None:
        return float(t.ge)
    if t.gt is not None:
        return float(t.gt) + 1.0
    if t.le is not None and t.le < 0:
        return float(t.le)
    return 1.0 if t.lt is None or t.lt > 1.0 else 0.0


def minimal_value(t: Any) -> Any:
    """The smallest value msgspec accepts for type info ``t`` (a plain builtin, encodable)."""
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):
        return minimal_value(t.type)
    if isinstance(t, mi.StructType):
        out: dict[str, Any] = {}
        if t.tag_field is not None:
            out[t.tag_field] = t.tag
        for f in t.fields:
            out[f.encode_name] = minimal_value(f.type)
        return out
    if isinstance(t, mi.UnionType):
        non_none = [u for u in t.types if not isinstance(u, mi.NoneType)]
        return minimal_value(non_none[0]) if non_none else None
    if isinstance(t, mi.IntType):
        return _int_for(t)
    if isinstance(t, mi.FloatType):
        return _float_for(t)
    if isinstance(t, mi.BoolType):
        return False
    if isinstance(t, mi.StrType):
        return _string_for(t)
    if isinstance(t, mi.BytesType | mi.ByteArrayType | mi.MemoryViewType):
        return bytes(t.min_length or 0)
    if isinstance(t, mi.ListType | mi.TupleType | mi.FrozenSetType | mi.SetType | mi.VarTupleType):
        n = t.min_length or 0
        return [minimal_value(t.item_type) for _ in range(n)]
    if isinstance(t, mi.TupleType):
        return [minimal_value(x) for x in t.item_types]
    if isinstance(t, mi.DictType):
        return {}
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.EnumType):
        return next(iter(t.cls)).value
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.AnyType):
        return 0
    raise TypeError(f"no minimal value for {t!r}")


def struct_seeds(types: tuple[type, ...], fmt: str = "msgpack") -> tuple[bytes, ...]:
    enc = msgspec.msgpack.encode if fmt == "msgpack" else msgspec.json.encode
    return tuple(enc(minimal_value(msgspec.inspect.type_info(t))) for t in types)


def union_members(typ: Any) -> tuple[type, ...]:
    args = getattr(typ, "__args__", None)
    return tuple(args) if args else (typ,)


def _typed(fn: Callable[..., object], typ: Any) -> Decoder:
    return lambda data: fn(data, typ)


def each(*decoders: Decoder) -> Decoder:
    """One target that feeds the same bytes to several decoders (each may refuse with a typed
    error; anything else propagates)."""
    def decode(data: bytes) -> object:
        accepted = 0
        for fn in decoders:
            try:
                fn(data)
                accepted += 1
            except SecureFLError:
                pass
        if accepted == 0:
            raise NoneAccepted("every decoder refused the input")
        return accepted

    return decode


class NoneAccepted(SecureFLError):
    """Every decoder of an :func:`each` target refused the input with a typed error."""

    code = "SFL990"  # test-only; unique, as tests/test_cli.py requires of every error class


# --- decoders -------------------------------------------------------------------------------------
def _secagg() -> Target:
    from securefl.protocol import messages as m

    return Target("secagg.message", m.decode_message, struct_seeds(union_members(m.SecAggMessage)),
                  "msgpack", "SecAgg/SecAgg+ tagged union (all 9 message types)")


def _ckks() -> Target:
    from securefl.protocol import ckks_messages as c
    from securefl.protocol import wire

    def decode(data: bytes) -> object:
        return wire.decode(data, c.CKKSMessage, max_bytes=c.max_message_bytes(c.MAX_CHUNK_BYTES, 4))

    return Target("ckks.message", decode, struct_seeds(c.CKKS_MESSAGES), "msgpack",
                  "CKKS tagged union (all 9 message types)")


def _two_way(prefix: str, module: Any, server_type: type, client_type: type,
             notes: str) -> list[Target]:
    """The server->client and client->server payload decoders of one transport."""
    return [Target(f"{prefix}.server", module.decode_server, struct_seeds((server_type,)),
                   "msgpack", notes),
            Target(f"{prefix}.client", module.decode_client, struct_seeds((client_type,)),
                   "msgpack", notes)]


def _deploy() -> list[Target]:
    from securefl.deploy import messages as d

    return _two_way("deploy", d, d.ServerPayload, d.ClientPayload, "deployment payload")


def _deploy_inner() -> Target:
    from securefl.deploy import messages as d
    from securefl.protocol import wire

    inner = (d.TrainPlan, d.Hello, d.BankInfo, d.RoundStart, d.GlobalModel)

    return Target("deploy.signed_bodies", each(*(_typed(wire.decode, t) for t in inner)),
                  struct_seeds(inner), "msgpack",
                  "bodies inside Signed (plan, hello, bank info, round start, model)")


def _flower() -> list[Target]:
    from securefl.flower import common as fc

    return _two_way("flower", fc, fc.ServerMsg, fc.ClientMsg,
                    "securefl_mod / SecureFLWorkflow payload")


def _envelope() -> Target:
    from securefl.transport import flower as tf

    return Target("transport.envelope", tf.decode_envelope, struct_seeds((tf.Envelope,)), "msgpack",
                  "Flower transport envelope")


def _manifest() -> Target:
    from securefl import federation as fed

    vec = json.loads((VECTORS / "federation" / "vectors" / "manifest.json").read_text("utf-8"))
    seeds = (json.dumps(vec["manifest"], indent=2).encode("utf-8"),
             json.dumps(vec["manifest"], separators=(",", ":")).encode("utf-8"))
    return Target("federation.manifest", fed.decode_manifest, seeds, "json",
                  "federation manifest (size check, strict JSON, structural rules)")


def _file_decoder(fn: Callable[[Path], object]) -> Decoder:
    """A decoder of a file path as one of bytes (the bytes are written to a private temp file)."""
    tmp = Path(tempfile.mkdtemp(prefix="securefl-fuzz-"))

    def decode(data: bytes) -> object:
        p = tmp / "input"
        p.write_bytes(data)
        p.chmod(0o600)
        return fn(p)

    return decode


def _identity() -> Target:
    from securefl import federation as fed
    from securefl.crypto.secret import Secret
    from securefl.crypto.signing import SigningKey

    key = SigningKey.from_seed(Secret(bytes(range(32))))
    seed = fed.encode_identity(fed.public_identity("bank0", "client", key.verify_key))
    return Target("federation.identity", _file_decoder(fed.load_identity), (seed,), "json",
                  "public identity file (fingerprint checked)")


def _ledger() -> Target:
    from securefl.dp.ledger import Ledger

    seeds = ((VECTORS / "ledger" / "example.jsonl").read_bytes(),)
    return Target("dp.ledger", Ledger.from_bytes, seeds, "jsonl",
                  "privacy ledger (hash chain, events validated, NaN/Inf refused)")


def _leaf() -> Target:
    from securefl.audit.records import decode_leaf

    lines = (RUN_VECTOR / "audit" / "log.jsonl").read_bytes().splitlines()
    return Target("audit.record", decode_leaf, tuple(lines[:3]), "json",
                  "audit leaf record (strict, canonical)")


def _commit() -> Target:
    from securefl.audit.layout import decode_commit

    return Target("audit.commit", decode_commit, ((RUN_VECTOR / "COMMIT").read_bytes(),), "json",
                  "COMMIT pointer (version, strict, canonical)")


def _note() -> Target:
    from securefl.audit.note import NoteVerifier, open_checkpoint, open_note

    vec = json.loads((VECTORS / "audit" / "vectors" / "note_ed25519.json").read_text("utf-8"))
    verifier = NoteVerifier.from_string(vec["verifier_key"])
    fed = json.loads((RUN_VECTOR / "federation.json").read_text("utf-8"))
    server_vkey = NoteVerifier.from_string(fed["server_key"])
    lines = (RUN_VECTOR / "audit" / "checkpoints").read_bytes().split(b"\n")
    checkpoints = [b"".join(x + b"\n" for x in lines[i : i + 5]) for i in range(0, 10, 5)]

    def vkey(data: bytes) -> object:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return NoteVerifier.from_string(text.strip())

    decode = each(lambda d: open_note(d, [verifier]), lambda d: open_checkpoint(d, server_vkey),
                  vkey)

    seeds = [vec.get("signed_note", vec.get("note", "")).encode("utf-8"),
             vec["verifier_key"].encode("utf-8")]
    seeds += checkpoints
    return Target("audit.note", decode, tuple(s for s in seeds if s), "raw",
                  "signed notes, checkpoints and verifier keys (C2SP)")


def _run_dir() -> Target:
    import shutil

    from securefl.audit.verify import verify_run_dir

    tmp = Path(tempfile.mkdtemp(prefix="securefl-fuzz-run-"))
    files = sorted(p.relative_to(RUN_VECTOR).as_posix() for p in RUN_VECTOR.rglob("*")
                   if p.is_file())

    def decode(data: bytes) -> object:
        """First byte picks the file to replace with the rest (verify the whole directory)."""
        if not data:
            return None
        run = tmp / "run"
        if run.exists():
            shutil.rmtree(run)
        shutil.copytree(RUN_VECTOR, run)
        (run / files[data[0] % len(files)]).write_bytes(data[1:])
        return verify_run_dir(run)

    seeds = tuple(bytes([i]) + (RUN_VECTOR / f).read_bytes() for i, f in enumerate(files)
                  if (RUN_VECTOR / f).stat().st_size < 200_000)
    return Target("audit.run_dir", decode, seeds, "raw",
                  "`securefl audit verify` of a run directory with one file replaced",
                  {"files": files})


def _config() -> Target:
    from securefl.config import from_mapping, load_toml

    def parse(p: Path) -> object:
        return from_mapping(load_toml(p), source="fuzz")

    seeds = (b'rounds = 3\naggregation = "secagg"\nclip_norm = 1.0\nnoise_multiplier = 0.8\n',
             b'banks = 4\nlr = 0.1\nhidden = [8, 4]\ntarget_epsilon = 2.5\ndp = true\n')
    return Target("config.toml", _file_decoder(parse), seeds, "toml", "run config file")


def _safetensors() -> Target:
    import numpy as np

    from securefl.fl.params import from_bytes, to_bytes

    seeds = (to_bytes({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                       "b": np.zeros(2, dtype=np.float64)}),)
    return Target("fl.model_safetensors", from_bytes, seeds, "raw", "global model bytes")


def _share_plaintext() -> Target:
    from securefl.crypto import shamir
    from securefl.protocol.secagg.canonical import _parse_share_plaintext, share_plaintext

    def decode(data: bytes) -> object:
        return _parse_share_plaintext(data, 1, 2)

    seed = share_plaintext(1, 2, 5, shamir.PRIME - 1 if hasattr(shamir, "PRIME") else 7)
    return Target("secagg.share_plaintext", decode, (seed,), "raw",
                  "opened share payload (length, ids, share range)")


def all_targets() -> list[Target]:
    """Every fuzz target (CKKS ciphertext/context parsing lives in tests/fuzz/ckks_worker.py)."""
    makers: list[Callable[[], Target]] = [
        _secagg, _ckks, _deploy_inner, _envelope, _manifest, _identity, _ledger, _leaf, _commit,
        _note, _run_dir, _config, _safetensors, _share_plaintext,
    ]
    from fuzz.machines import machine_targets

    return [*_deploy(), *_flower(), *(m() for m in makers), *machine_targets()]


def message_targets() -> list[Target]:
    """The decoders that take bytes in memory (no file I/O): every wire message, the ledger, audit
    records, COMMIT, signed notes, the manifest and the share payload. The atheris default."""
    file_based = {"federation.identity", "audit.run_dir", "config.toml"}
    return [t for t in all_targets() if t.name not in file_based]
