"""Issue 16, "Audit log": tampering that `securefl audit verify` used to pass.

1. result.json's final metrics and epsilon claims changed and re-signed with the server key: the
   claims are re-derived from the last committed record and from the ledger;
2. result.json deleted and COMMIT's result pointer set to null: COMMIT is signed by the log key
   (and an unsigned version 1 COMMIT is refused with a typed error naming its version);
3. the whole run re-signed with a new key: the report names the key it checked against, says
   that an unpinned check proves only internal consistency, and `--key`/`--manifest` pin the key.

Each test reproduces the tampering on a real run directory (a `securefl run` simulation with DP, a
fast fake run, and a local deployment) and fails if verification accepts it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import (
    fake_result,
    make_run,
    resign_everything,
    resign_result,
    rewrite_commit,
    server_key,
    snapshot,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.audit.claims import check_result_claims
from securefl.audit.records import RoundRecord
from securefl.audit.store import RunStore
from securefl.audit.verify import verify_run_dir
from securefl.cli.main import main
from securefl.crypto.signing import SigningKey
from securefl.errors import AuditError, AuditFormatError, StateError
from securefl.result import RoundReport

SIM: dict[str, Any] = {"rounds": 2, "model": "logreg", "dp": True, "aggregation": "plain",
                       "seed": 5}


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `securefl run` simulation with DP: result.json claims metrics, epsilons and history."""
    from securefl.config import RunConfig
    from securefl.runtime import run

    d = tmp_path_factory.mktemp("sim") / "run"
    run(RunConfig(**SIM, out=str(d)))
    return d


@pytest.fixture
def sim_copy(sim_run: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(sim_run, d)
    return d


def _key(run_dir: Path) -> SigningKey:
    return SigningKey.from_pem((run_dir / "keys/server.key").read_bytes())


def _result(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads((run_dir / "result.json").read_bytes())["body"]["result"]
    return out


# ---------------------------------------------------------------------- 1. false claims, re-signed
def test_simulation_run_verifies_with_every_claim_checked(sim_run: Path) -> None:
    res = _result(sim_run)
    assert res["privacy"]["federation"]["client"]["epsilon"] > 0
    assert all(h["epsilon"] for h in res["history"])
    report = verify_run_dir(sim_run)
    assert report.has_result
    assert set(report.claims_checked) == {"final_metrics", "model_sha256", "history",
                                          "history.epsilon", "rounds_completed", "privacy"}
    assert report.claims_unchecked == []


def test_final_metrics_changed_and_resigned_is_refused(sim_copy: Path) -> None:
    name = sorted(_result(sim_copy)["final_metrics"])[0]

    def lie(res: dict[str, Any]) -> None:
        res["final_metrics"][name] = 0.5 if res["final_metrics"][name] != 0.5 else 0.6

    resign_result(sim_copy, _key(sim_copy), lie)
    with pytest.raises(AuditError, match=rf"claim final_metrics: {name} = 0\.[56], but round 2"):
        verify_run_dir(sim_copy)


def test_epsilon_claims_changed_and_resigned_are_refused(sim_copy: Path) -> None:
    """The issue's case: every epsilon of the privacy report replaced by 0.5 (and re-signed)."""
    def lie(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "epsilon" and isinstance(v, float):
                    obj[k] = 0.5
                else:
                    lie(v)

    resign_result(sim_copy, _key(sim_copy), lambda res: lie(res["privacy"]))
    with pytest.raises(AuditError, match=r"claim privacy\.banks\..*\.epsilon: 0\.5, but the "
                                         r"ledger gives"):
        verify_run_dir(sim_copy)


def test_one_bank_epsilon_changed_is_refused(sim_copy: Path) -> None:
    bank = sorted(_result(sim_copy)["privacy"]["banks"])[-1]

    def lie(res: dict[str, Any]) -> None:
        level = res["privacy"]["banks"][bank]["record"]
        level["epsilon"] = level["epsilon"] * (1 - 1e-6)

    resign_result(sim_copy, _key(sim_copy), lie)
    with pytest.raises(AuditError, match=rf"privacy\.banks\.{bank}\.record\.epsilon"):
        verify_run_dir(sim_copy)


def test_running_epsilon_and_round_metrics_in_the_history_are_checked(sim_copy: Path) -> None:
    original = snapshot(sim_copy)
    resign_result(sim_copy, _key(sim_copy),
                  lambda res: res["history"][0]["epsilon"].update(client=0.001))
    with pytest.raises(AuditError, match=r"claim history\[0\]\.epsilon\.client: 0\.001"):
        verify_run_dir(sim_copy)
    for rel, data in original.items():
        (sim_copy / rel).write_bytes(data)
    name = sorted(_result(sim_copy)["history"][0]["metrics"])[0]
    resign_result(sim_copy, _key(sim_copy),
                  lambda res: res["history"][0]["metrics"].update({name: 0.99}))
    with pytest.raises(AuditError, match=r"claim history\[0\]\.metrics"):
        verify_run_dir(sim_copy)


@pytest.mark.parametrize("metric", ["brier", "ece", "reliability/bin/observed"])
def test_calibration_claims_changed_and_resigned_are_refused(sim_copy: Path, metric: str) -> None:
    """Issue 18 item 3: the Brier score, the ECE and every reliability bin are claims like ROC-AUC."""
    final = _result(sim_copy)["final_metrics"]
    if metric.startswith("reliability/"):
        metric = sorted(k for k in final if k.startswith("reliability/") and k.endswith("/observed"))[0]
    assert metric in final

    def lie(res: dict[str, Any]) -> None:
        res["final_metrics"][metric] = final[metric] * 0.5 + 0.01

    resign_result(sim_copy, _key(sim_copy), lie)
    with pytest.raises(AuditError, match=rf"claim final_metrics: {metric} ="):
        verify_run_dir(sim_copy)


def test_baselines_are_reported_as_not_checkable(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2)
    resign_result(d, server_key(), lambda res: res.update(baselines={"centralized": {"auc": 0.9}}))
    assert "baselines" in verify_run_dir(d).claims_unchecked


def test_a_float_formatted_differently_is_accepted(sim_copy: Path) -> None:
    """Tolerance only for float formatting: 15 significant digits pass, 1e-6 does not (above)."""
    def reformat(res: dict[str, Any]) -> None:
        level = res["privacy"]["federation"]["client"]
        level["epsilon"] = float(f"{level['epsilon']:.15g}")

    resign_result(sim_copy, _key(sim_copy), reformat)
    assert "privacy" in verify_run_dir(sim_copy).claims_checked


def test_a_ledger_line_that_is_not_a_privacy_ledger_makes_the_epsilon_claim_fail(
        tmp_path: Path) -> None:
    """The fake run's ledger lines are opaque test strings: an epsilon claim cannot stand on them."""
    d = tmp_path / "run"
    make_run(d, 2)
    resign_result(d, server_key(), lambda res: res.update(
        privacy={"accountant": "rdp", "delta": 1e-5}))
    with pytest.raises(AuditError, match=r"claim privacy: ledger\.jsonl cannot be read"):
        verify_run_dir(d)


@settings(max_examples=60, deadline=None)
@given(metric=st.sampled_from(["loss", "accuracy"]),
       value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_other_final_metric_value_is_refused(metric: str, value: float) -> None:
    """Property: final_metrics passes only when every value is the last record's, bit for bit."""
    store = _fake_store()
    last = store.records[-1]
    assert isinstance(last, RoundRecord)
    want = dict(last.metrics)
    claimed = {**want, metric: value}
    if value == want[metric]:
        assert check_result_claims(fake_result(store, final_metrics=claimed), store.records, [],
                                   {}).checked
    else:
        with pytest.raises(AuditError, match=rf"final_metrics: {metric} ="):
            check_result_claims(fake_result(store, final_metrics=claimed), store.records, [], {})


def _report(r: int, aborted: str | None, metrics: dict[str, float]) -> RoundReport:
    return RoundReport(round=r, participants=(), survivors=(), dropouts={}, metrics=metrics,
                       update_norms_clipped=0, seconds=0.0, epsilon={}, aborted=aborted,
                       error=None)


def test_model_aborted_and_unknown_claims_on_the_fake_run() -> None:
    """model_sha256, history[i].aborted (the record's status and error code), a claim naming no
    committed round, rounds_completed, and final_metrics of a run with no committed round (not
    checkable: reported, not refused)."""
    store = _fake_store()
    recs = store.records  # round 3 of make_run is aborted (SFL310)
    m3 = dict(recs[3].metrics)
    with pytest.raises(AuditError, match="claim model_sha256: is not the last round's model"):
        check_result_claims(fake_result(store, model_sha256="0" * 64), recs, [], {})
    with pytest.raises(AuditError, match=r"claim history\[0\]\.aborted: round 3 is aborted"):
        check_result_claims(fake_result(store, history=[_report(3, None, m3)]), recs, [], {})
    with pytest.raises(AuditError, match=r"claim history\[0\]\.aborted: SFL311, but round 3's "
                                         r"record says SFL310"):
        check_result_claims(fake_result(store, history=[_report(3, "SFL311", m3)]), recs, [], {})
    assert "history" in check_result_claims(
        fake_result(store, history=[_report(3, "SFL310", m3)]), recs, [], {}).checked
    with pytest.raises(AuditError, match=r"claim history\[0\]: names no committed round"):
        check_result_claims(fake_result(store, history=[_report(9, None, m3)]), recs, [], {})
    with pytest.raises(AuditError, match=r"claim rounds_completed: 4, but the log holds 3"):
        check_result_claims(fake_result(store, rounds_completed=4), recs, [], {})
    out = check_result_claims(fake_result(store, final_metrics={"loss": 0.1}, rounds_completed=0,
                                          model_sha256=recs[0].model_sha256), recs[:1], [], {})
    assert "final_metrics" in out.unchecked and "final_metrics" not in out.checked


def test_a_privacy_field_the_recomputation_does_not_have_is_refused(sim_copy: Path) -> None:
    resign_result(sim_copy, _key(sim_copy),
                  lambda res: res["privacy"].update(epsilon_total=0.1))
    with pytest.raises(AuditError, match=r"claim privacy: claims fields \['epsilon_total'\] the "
                                         r"recomputation does not have and lacks \[\]"):
        verify_run_dir(sim_copy)


_FAKE: list[RunStore] = []


def _fake_store() -> RunStore:
    if not _FAKE:
        import atexit
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="securefl-claims-"))
        atexit.register(shutil.rmtree, base, True)
        _FAKE.append(make_run(base / "run", 4))
    return _FAKE[0]


# ---------------------------------------------------------------------- 2. result deleted, COMMIT
@pytest.mark.parametrize("key_file", [True, False])
def test_result_deleted_and_commit_pointer_nulled_is_refused(tmp_path: Path,
                                                            key_file: bool) -> None:
    d = tmp_path / "run"
    if key_file:
        make_run(d, 3)
    else:  # as a deployment writes it: the key is kept outside the directory
        store = RunStore.create(d, config={"rounds": 1}, server_key=server_key(),
                                origin="securefl.test/run-nokey", initial_model=b"m0",
                                federation={}, write_key_file=False)
        store.commit_round(round_=1, record_fields={
            "session_id": "ab", "aggregation": "plain", "participants": ["a", "b"],
            "survivors": ["a", "b"]}, model=b"m1", ledger_lines=[], metrics={"loss": 1.0})
        store.finish(fake_result(store))
    assert verify_run_dir(d).has_result
    os.unlink(d / "result.json")
    rewrite_commit(d, None, result_sha256=None)  # no key: the old signature stays
    with pytest.raises(AuditError, match=r"COMMIT: not signed by the log key"):
        verify_run_dir(d)
    with pytest.raises(AuditError, match=r"COMMIT: not signed by the log key"):
        RunStore.open(d, verify=False)


def test_a_forged_commit_cannot_make_recovery_cut_committed_rounds(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 3, finish=False)
    before = snapshot(d)
    sizes = json.loads((d / "COMMIT").read_bytes())["sizes"]
    import msgspec

    from securefl.audit.layout import CommitSizes

    smaller = msgspec.convert({**sizes, "audit/log.jsonl": 10}, CommitSizes)
    rewrite_commit(d, None, last_round=1, sizes=smaller)
    with pytest.raises(AuditError, match="not signed"):
        RunStore.open(d)
    assert {k: v for k, v in snapshot(d).items() if k != "COMMIT"} == {
        k: v for k, v in before.items() if k != "COMMIT"}


def test_commit_signed_but_not_for_this_log_is_refused(tmp_path: Path) -> None:
    """The signed root_hash binds COMMIT to the records: a COMMIT of another run (same key, e.g.
    a deployment's server key) does not fit."""
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, 2, finish=False)
    make_run(b, 3, finish=False)
    rewrite_commit(b, server_key(), root_hash=json.loads((a / "COMMIT").read_bytes())["root_hash"])
    with pytest.raises(AuditError, match="COMMIT: root_hash is not the root"):
        verify_run_dir(b)


def test_unsigned_version_1_commit_is_refused_naming_the_format_version(tmp_path: Path) -> None:
    d = tmp_path / "run"
    make_run(d, 2)
    c = json.loads((d / "COMMIT").read_bytes())
    v1 = {"last_round": c["last_round"], "result_sha256": c["result_sha256"],
          "sizes": c["sizes"], "version": 1}
    (d / "COMMIT").write_bytes(json.dumps(v1, sort_keys=True, separators=(",", ":")).encode())
    for call in (lambda: verify_run_dir(d), lambda: RunStore.open(d)):
        with pytest.raises(AuditFormatError, match=r"COMMIT: format version 1; this securefl "
                                                   r"verifies version 2 only \(version 1 COMMIT "
                                                   r"files are unsigned") as ei:
            call()
        assert ei.value.code == "SFL601"
    assert main(["audit", "verify", str(d)]) == 8


# ---------------------------------------------------------------------- 3. key replaced
def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "verify", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_resigned_with_a_new_key_verifies_only_unpinned_and_says_so(
        sim_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    forged, mine = tmp_path / "forged", SigningKey.generate()
    resign_everything(sim_run, forged, mine)
    fp_true, fp_forged = _key(sim_run).verify_key.fingerprint(), mine.verify_key.fingerprint()
    assert fp_true != fp_forged
    code, out, _ = _cli(capsys, str(forged))
    assert code == 0
    assert f"key: {fp_forged} from federation.json in the run directory (not pinned)" in out
    assert "WARNING: no server key pinned; this proves internal consistency only" in out
    code, out, _ = _cli(capsys, str(forged), "--json")
    doc = json.loads(out)
    assert (doc["key_fingerprint"], doc["key_pinned"]) == (fp_forged, False)
    assert doc["assurance"].startswith("internal consistency only")
    # pinned to the true key, the forgery fails
    pub = tmp_path / "server.pub"
    pub.write_bytes(_pem_public(_key(sim_run)))
    code, _, err = _cli(capsys, str(forged), "--key", str(pub))
    assert code == 8 and f"is not the pinned key {fp_true}" in err
    code, out, _ = _cli(capsys, str(sim_run), "--key", str(pub))
    assert code == 0 and "WARNING" not in out
    assert f"key: {fp_true} from --key {pub} (PEM public key)" in out


def _pem_public(key: SigningKey) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pub = Ed25519PublicKey.from_public_bytes(key.verify_key.raw)
    return pub.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


# ---------------------------------------------------------------------- deployment, --manifest
@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """A 1-round local deployment (in-process link): the audit log is signed with the manifest's
    server key, which is not written into the run directory."""
    from deploy_helpers import make_federation

    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    root = tmp_path_factory.mktemp("deploy")
    f = make_federation(root / "fed", {"rounds": 1, "seed": 3})
    run_dir = root / "run"
    srv = DeployServer(ServerSettings.load(f.server_file(run_dir)))
    banks = {i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
             for i, b in enumerate(f.banks)}
    link = LocalLink(banks, srv.fed.digest)
    srv.run(link, link.names())
    yield f, run_dir


def test_deployment_run_verifies_pinned_by_its_manifest(
        deployed: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deploy_helpers import SERVER

    from securefl.federation import encode_identity, load_signing_key, public_identity

    f, run_dir = deployed
    assert not (run_dir / "keys/server.key").exists()
    server = load_signing_key(f.keys[SERVER]).verify_key
    code, out, _ = _cli(capsys, str(run_dir), "--manifest", str(f.manifest))
    assert code == 0, out
    assert f"key: {server.fingerprint()} from --manifest {f.manifest} (federation test-fed, " \
           f"server {SERVER}" in out
    assert "WARNING" not in out and "proves: the run directory is exactly what" in out
    ident = tmp_path / "agg.pub.json"
    ident.write_bytes(encode_identity(public_identity(SERVER, "server", server)))
    code, out, _ = _cli(capsys, str(run_dir), "--key", str(ident), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["key_pinned"] and doc["key_fingerprint"] == server.fingerprint()
    assert "final_metrics" in doc["claims_checked"]
    # read-only without the key; a resumed server passes its own key
    with pytest.raises(StateError, match="read-only"):
        read_only = RunStore.open(run_dir)
        read_only.finish(fake_result(read_only))


def test_deployment_resigned_with_another_key_fails_against_the_manifest(
        deployed: tuple[Any, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f, run_dir = deployed
    forged = tmp_path / "forged"
    resign_everything(run_dir, forged, SigningKey.generate())
    code, out, _ = _cli(capsys, str(forged))
    assert code == 0 and "WARNING: no server key pinned" in out
    code, _, err = _cli(capsys, str(forged), "--manifest", str(f.manifest))
    assert code == 8 and "is not the pinned key" in err
