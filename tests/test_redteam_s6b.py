"""Red team s6b: re-checking the f14 / f16 fixes (issue 14 S6-1..S6-6, issue 16). Each test asserts
the secure behaviour and failed while the hole was open. S6b-2 and S6b-3 are fixed (round 0 is
classic SecAgg); S6b-1 (CKKS round 0) and S6b-4 (the threshold choice) are open: their failing tests
are on branch rt2 (protocols/secagg/spec.md 12.1, "Known gaps")."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import make_federation

from securefl.errors import ConfigError


# --- S6b-2 (High): SecAgg+ round 0: the survivor record is per bank, the reveals need not be ------
def test_s6b_2_round0_needs_reveals_from_more_than_half_the_banks(tmp_path: Path) -> None:
    """Spec 12.1's soundness argument for Round0Survivors needs every round-0 release to take
    reveals that no two disjoint sets of honest banks can both supply. A SecAgg+ round 0 (degree
    None: derived; n = 200, T = 101 gave k = 159, t = 2) did not: the server sent the unmask
    request to one half in session 1 and to the other half (victim cut off) in session 2, each bank
    revealed for one set only, and the totals differenced to the victim's moments. Now round 0 is
    classic SecAgg: the honest server signs degree n - 1 (t = T, 2T > n + c), and a bank refuses a
    round-0 plan with any other degree, and the task "moments" at any round but 0."""
    from types import SimpleNamespace

    import msgspec

    from securefl.deploy.client import BankNode
    from securefl.deploy.common import encoding_for, round_spec, secagg_config
    from securefl.deploy.messages import RoundStart
    from securefl.deploy.server import DeployServer, ServerSettings
    from securefl.federation import ProtocolParams

    n = 200
    p = ProtocolParams(aggregation="secagg", threshold=101)  # 2T > n + c
    names = [f"b{i}" for i in range(n)]
    ids = {b: i for i, b in enumerate(names)}
    start = RoundStart(session=bytes(16), round=0, task="moments", participants=names,
                       threshold=p.threshold, clip_norm=1.0, noise_multiplier=0.0,
                       min_survivors=p.threshold, degree=n - 1, precision_bits=21, dim=10)
    spec = round_spec(start, ids, params=p)
    enc, _ = encoding_for(start, spec)
    cfg = secagg_config(start, spec, enc, start.threshold, SimpleNamespace(params=p))  # type: ignore[arg-type]
    assert 2 * cfg.neighbour_threshold > n + p.colluders

    # the honest server signs round 0 as the complete graph; a bank refuses anything else
    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3})
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    sizes = {b: 1.0 for b in f.banks}
    honest, _ = srv._start(0, list(f.banks), 10, clip=1.0, weights=sizes)
    assert honest.degree == len(f.banks) - 1
    node = BankNode.from_node_config(f.node_config(f.banks[0], sim_seed=3))
    fed = node.federation()
    node._check_plan(fed, honest, srv.session)
    for bad in (msgspec.structs.replace(honest, degree=None),
                msgspec.structs.replace(honest, degree=1),
                msgspec.structs.replace(honest, round=1)):
        with pytest.raises(ConfigError, match=r"round 0|moments"):
            node._check_plan(fed, bad, srv.session)


# --- S6b-3 (Low): a manifest that states its degree cannot complete round 0 -----------------------
def test_s6b_3_a_manifest_with_an_explicit_degree_completes_a_deployment(tmp_path: Path) -> None:
    """f14: "banks check the plan's degree against the manifest" (BankNode._check_plan:
    ``start.degree != p.neighbours`` refuses). DeployServer._start signs round 0 with
    ``degree=None`` whatever the manifest says, so a manifest with neighbours set (even
    n - 1, the complete graph the Flower path asks for) is refused by every bank at round 0: the
    deployment never trains. Degree None vs stated: the two sides disagree. Secure and working:
    round 0's degree is the manifest's (or the check allows round 0's documented rule)."""
    from securefl.deploy.client import BankNode
    from securefl.deploy.local import LocalLink
    from securefl.deploy.server import DeployServer, ServerSettings

    f = make_federation(tmp_path / "fed", {"rounds": 1, "seed": 3, "neighbours": 2})  # 3 banks
    srv = DeployServer(ServerSettings.load(f.server_file(tmp_path / "run")))
    nodes = {i: BankNode.from_node_config(f.node_config(b, sim_seed=3))
             for i, b in enumerate(f.banks)}
    link = LocalLink(nodes, srv.fed.digest)
    # before the fix every bank refused round 0 (degree None != 2) and the run never trained
    assert srv.run(link, link.names())["rounds_completed"] == 1
