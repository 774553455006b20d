"""A federation on disk for deployment tests: identity keys, a manifest signed by every member,
each bank's rows in its own CSV (from the embedded data, split like ``securefl run``), the
server's global test file and its deployment file."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from securefl.crypto.signing import SigningKey
from securefl.federation import (
    Federation,
    Member,
    ProtocolParams,
    create_manifest,
    encode_manifest,
    sign_manifest,
)

SERVER = "agg"
KEY_HOLDER = "kh"


def identity_keys(names: list[str]) -> dict[str, SigningKey]:
    """A fresh identity key for the server, every bank in ``names`` and the key holder."""
    return {n: SigningKey.generate() for n in [SERVER, *names, KEY_HOLDER]}


def signed_federation(banks: list[str], keys: dict[str, SigningKey], params: ProtocolParams,
                      fid: str = "test-fed") -> Federation:
    """A manifest over ``banks`` (plus the server and, for ckks, the key holder) signed by every
    member with ``keys`` (:func:`identity_keys`), verified; no files."""
    members = [Member(name=SERVER, role="server", public_key=keys[SERVER].verify_key.raw.hex())]
    members += [Member(name=b, role="client", public_key=keys[b].verify_key.raw.hex())
                for b in banks]
    if params.aggregation == "ckks":
        members.append(Member(name=KEY_HOLDER, role="ckks-key-holder",
                              public_key=keys[KEY_HOLDER].verify_key.raw.hex()))
    m = create_manifest(fid, members, params)
    for member in members:
        m = sign_manifest(m, member.name, keys[member.name])
    return Federation(m)


def write_csv(path: Path, X: Any, y: Any, label: str = "default") -> None:
    cols = [f"f{i}" for i in range(X.shape[1])] + [label]
    rows = np.column_stack([np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    np.savetxt(path, rows, delimiter=",", fmt="%.17g", header=",".join(cols), comments="")


@dataclass
class Fed:
    root: Path
    banks: list[str]
    manifest: Path
    keys: dict[str, Path]
    data: dict[str, Path]
    data_dir: Path
    test_file: Path
    run: dict[str, Any]
    #: aggregation ckks: the key holder's CKKS key directory (``securefl keys ckks``)
    ckks_dir: Path | None = None

    def server_file(self, run_dir: Path, **extra: Any) -> Path:
        cfg = {"manifest": str(self.manifest), "key": str(self.keys[SERVER]),
               "run_dir": str(run_dir), "run": self.run, "test_data": str(self.test_file),
               "insecure_sim_streams": True, **extra}
        p = self.root / "server.json"
        p.write_text(json.dumps(cfg))
        return p

    def node_config(self, bank: str, sim_seed: int | None = 0) -> dict[str, Any]:
        cfg: dict[str, Any] = {"member": bank, "key": str(self.keys[bank]),
                               "manifest": str(self.manifest), "data-path": str(self.data[bank])}
        if sim_seed is not None:
            cfg["insecure-sim-seed"] = sim_seed
        return cfg

    def key_holder_config(self, sim_seed: int | None = 0) -> dict[str, Any]:
        """The CKKS key holder's node config (its own SuperNode)."""
        if self.ckks_dir is None:
            raise ValueError("not a ckks federation")
        cfg: dict[str, Any] = {"role": "ckks-key-holder", "member": KEY_HOLDER,
                               "key": str(self.keys[KEY_HOLDER]), "manifest": str(self.manifest),
                               "ckks-keys": str(self.ckks_dir)}
        if sim_seed is not None:
            cfg["insecure-sim-seed"] = sim_seed
        return cfg


def write_key(path: Path, key: SigningKey) -> Path:
    path.write_bytes(key.to_pem().expose())
    path.chmod(0o600)
    return path


#: the roots of the federations made here (their banks' default state dirs hold round-0 records)
_ROOTS: list[Path] = []


def forget_round0() -> None:
    """Delete every bank's round-0 survivor record (spec 12.1, "Round 0 across sessions") of the
    federations made here: module-scoped federations are shared by tests that each play a fresh
    deployment, with their own survivor sets (tests/conftest.py calls it before every test)."""
    for root in _ROOTS:
        for record in root.glob("keys/*.state/round0-*.json"):
            record.unlink()


def make_federation(root: Path, run: dict[str, Any], *, signers: list[str] | None = None,
                    params: ProtocolParams | None = None) -> Fed:
    """Keys, a manifest (signed by ``signers``, default everyone), bank files, test file."""
    from securefl.config import RunConfig
    from securefl.data import build_federated_data

    c = RunConfig(**{k: v for k, v in run.items()})
    fed = build_federated_data(data=c.data, label=c.label, task=None, split_by=c.split_by,
                               banks=c.banks, partition=c.partition, alpha=c.alpha,
                               test_fraction=c.test_fraction,
                               local_test_fraction=c.local_test_fraction, seed=c.seed)
    # manifest names allow [A-Za-z0-9._-]: bank i keeps its position (its SecAgg id)
    banks = [re.sub(r"[^A-Za-z0-9._-]", "-", b.name)[:64] for b in fed.banks]
    root.mkdir(parents=True, exist_ok=True)
    _ROOTS.append(root)
    keydir = root / "keys"
    keydir.mkdir()
    data_dir = root / "banks"
    data_dir.mkdir()
    ckks = c.aggregation == "ckks"
    parties = [SERVER, *banks, *([KEY_HOLDER] if ckks else [])]
    keys: dict[str, SigningKey] = {n: SigningKey.generate() for n in parties}
    paths = {n: write_key(keydir / f"{n}.key", k) for n, k in keys.items()}
    members = [Member(name=SERVER, role="server", public_key=keys[SERVER].verify_key.raw.hex())]
    members += [Member(name=n, role="client", public_key=keys[n].verify_key.raw.hex())
                for n in banks]
    ckks_dir = None
    if ckks:
        from securefl.keyholder import create_key_holder_keys

        members.append(Member(name=KEY_HOLDER, role="ckks-key-holder",
                              public_key=keys[KEY_HOLDER].verify_key.raw.hex()))
        ckks_dir = root / "kh-ckks"
        create_key_holder_keys(ckks_dir)
    params = params or ProtocolParams(aggregation="ckks" if ckks else "secagg", threshold=2,
                                      clip_norm=c.clip_norm,
                                      noise_multiplier=c.noise_multiplier if c.dp else 0.0,
                                      clients_per_round=c.clients_per_round,
                                      neighbours=c.neighbours)
    m = create_manifest("test-fed", members, params)
    for n in (signers if signers is not None else parties):
        m = sign_manifest(m, n, keys[n])
    manifest = root / "manifest.json"
    manifest.write_bytes(encode_manifest(m))
    data = {}
    # the banks' files hold raw labels: a regression target in label units
    raw = fed.target_scaler.inverse if fed.target_scaler is not None else (lambda y: y)
    for name, b in zip(banks, fed.banks, strict=True):
        d = data_dir / name
        d.mkdir()
        data[name] = d / "rows.csv"
        write_csv(data[name], b.X_train, raw(b.y_train))
    test_file = root / "server-test.csv"
    write_csv(test_file, fed.X_test, raw(fed.y_test))
    return Fed(root=root, banks=banks, manifest=manifest, keys=paths, data=data,
               data_dir=data_dir, test_file=test_file, run=run, ckks_dir=ckks_dir)


def node_config_string(cfg: dict[str, Any]) -> str:
    """A node config as ``flower-supernode --node-config`` takes it (strings quoted)."""
    return " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in cfg.items())


def final_weights(run_dir: Path) -> Any:
    """The model weights (float64, without the server optimizer's state) of a run directory's
    last committed round."""
    from securefl.audit.store import RunStore
    from securefl.fl.params import from_bytes

    store = RunStore.open(run_dir)
    tensors = from_bytes(store.model_bytes(store.last_round))
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel()
                           for k, v in sorted(tensors.items()) if not k.startswith("server_opt.")])


def round0_differencing(f: Fed, tmp_path: Path, victim: int, *, key_holder: bool = False,
                        refused: tuple[type[Exception], ...] = ()) -> tuple[list[Any], Any]:
    """The S6-5 / S6b-1 attack on round 0: session 1 with every bank, session 2 with bank
    ``victim`` cut off (its state dirs, and the key holder's, persist between the sessions); a
    ``refused`` error ends session 2 (any other error fails the caller). Returns the round-0
    totals the server released (one per session that released) and the victim's own round-0
    vector; a difference of two totals equal to it is the leak."""
    from securefl.deploy.ckks import KeyHolderNode
    from securefl.deploy.client import BankNode, load_bank_csv
    from securefl.deploy.common import round0_input
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    totals: list[Any] = []

    class Keeping(DeployServer):
        def _finish(self, rs: Any, done: Any) -> None:
            super()._finish(rs, done)
            if done.start.round == 0:
                totals.append(np.asarray(rs.moments_total, dtype=np.float64))

    for run, kill in (("s1", None), ("s2", lambda trip, nid: nid == victim)):
        srv = Keeping(ServerSettings.load(f.server_file(
            tmp_path / run, state_dir=str(tmp_path / "server-state"))))
        nodes: dict[int, Any] = {i: BankNode.from_node_config(
            {**f.node_config(b, sim_seed=None), "state-dir": str(tmp_path / "bank-state" / b)})
            for i, b in enumerate(f.banks)}
        if key_holder:
            nodes[99] = KeyHolderNode.from_node_config(
                {**f.key_holder_config(sim_seed=None), "usage-file": str(tmp_path / "kh.json"),
                 "state-dir": str(tmp_path / "kh-state")})
        link = LocalLink(nodes, srv.fed.digest, kill=kill)
        try:
            srv.run(link, link.names())
        except refused:
            if run == "s1":
                raise
    X, y = load_bank_csv(f.data[f.banks[victim]], "default")
    return totals, round0_input(X, y, None)
