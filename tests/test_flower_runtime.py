"""A real Flower 1.42 deployment on 127.0.0.1: TLS, SuperNode auth, raw bytes in an ArrayRecord,
node_config reaching the ClientApp, and a SIGKILLed SuperNode seen as missing after the timeout.

Measured numbers are printed (run with ``-s``) and written next to the artifact.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import msgspec
import pytest
from flower_harness import CONN, FEDERATION, FlowerCluster, make_app, make_pki, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import MessageError
from securefl.transport.flower import (
    Envelope,
    StageExchange,
    decode_envelope,
    encode_envelope,
    handle_client_message,
    run_round,
)

N_NODES = 3
SIZES = [4, 4 * 1_000, 4 * 100_000]  # bytes: 1, 1e3 and 1e5 float32 values
KILL_TIMEOUT_S = 15.0


@pytest.mark.slow
def test_flower_runtime_round_trips_and_dropout(tmp_path: Path) -> None:
    artifact = tmp_path / "artifact.json"
    killed_flag = tmp_path / "killed"
    cfg = {"artifact": str(artifact), "nodes": N_NODES, "sizes": SIZES, "timeout": 60.0,
           "kill_phase": True, "killed_flag": str(killed_flag), "kill_timeout": KILL_TIMEOUT_S,
           "federation": FEDERATION}
    app = make_app(tmp_path, cfg)
    cluster = FlowerCluster(tmp_path, N_NODES)
    t0, wall0 = time.monotonic(), time.time()
    run: subprocess.CompletedProcess[str] | None = None
    try:
        cluster.start()
        cluster.add_unregistered_supernode("intruder")
        cluster.add_unregistered_supernode(
            "stranger", root_cert=make_pki(tmp_path / "other-ca").ca_cert)
        t_nodes = time.monotonic() - t0
        run = cluster.flwr("run", str(app), CONN, timeout=120)
        t_submitted = time.monotonic() - t0
        before = wait_for(artifact, lambda o: o["status"] != "running", timeout=150)
        assert before is not None, (
            f"no artifact; flwr run rc={run.returncode}\n{run.stdout}\n{run.stderr}\n"
            f"{cluster.log('superlink')[-3000:]}\n{cluster.log('inst0')[-2000:]}")
        assert before["status"] == "waiting-for-kill", before
        t_rounds_done = time.monotonic() - t0
        cluster.kill("inst0")
        killed_flag.touch()
        final = wait_for(artifact, lambda o: o["status"] != "waiting-for-kill", timeout=90)
        assert final is not None, cluster.log("superlink")[-3000:]
        t_end = time.monotonic() - t0
    finally:
        cluster.stop()
    for proc in cluster.procs.values():
        assert proc.poll() is not None  # every process we started is gone

    assert final["status"] == "done", final["status"]
    assert run is not None and run.returncode == 0
    assert len(final["node_ids"]) == N_NODES
    # every payload came back intact from every node, with that node's own data-path
    for rnd in final["rounds"]:
        assert rnd["ok"] == {str(n): True for n in final["node_ids"]}, rnd
        paths = sorted(m["data_path"].rsplit("/", 1)[1] for m in rnd["info"].values())
        assert paths == [f"inst{i}" for i in range(N_NODES)]
    # context.state persisted per node across messages (each message is a fresh process)
    assert {m["calls"] for m in final["rounds"][-1]["info"].values()} == {len(SIZES)}
    # node auth: the SuperNode with an unregistered key never joined
    assert final["node_ids_late"] == final["node_ids"]
    assert "Failed to activate SuperNode" in cluster.log("intruder")
    assert "SSL" not in cluster.log("intruder")  # its TLS was fine: node auth refused it
    # TLS: a SuperNode trusting another CA refuses the SuperLink's certificate
    assert "CERTIFICATE_VERIFY_FAILED" in cluster.log("stranger")
    # NodeInfo.name (from `flwr supernode register --name`) names every node
    assert sorted(final["node_names"].values()) == [f"inst{i}" for i in range(N_NODES)]
    # the draft adapter: two stages, one Flower round trip each, every reply verified and the
    # per-node state counter advanced across stages (context.state survives between processes)
    names = [f"inst{i}" for i in range(N_NODES)]
    for k, stage in enumerate(final["adapter"], start=1):
        assert stage["good"] == dict.fromkeys(names, True), stage
        assert stage["counts"] == dict.fromkeys(names, k), stage
        assert stage["dropped"] == {}
    # the killed node is a dropout after the timeout; the others answered
    after = final["after_kill"]
    assert after["replies"] == ["inst1", "inst2"], after
    assert after["dropped"] == {"inst0": f"no reply within {KILL_TIMEOUT_S:g} s"}, after
    assert after["seconds"] >= KILL_TIMEOUT_S - 0.5

    numbers = {
        "cluster_up_s": round(t_nodes, 1),
        "flwr_run_submit_s": round(t_submitted - t_nodes, 1),
        "first_round_ready_s": round(t_rounds_done, 1),
        "serverapp_started_s": round(final["started"] - wall0, 1),
        "wait_nodes_s": round(final["wait_nodes_s"], 1),
        "round_trip_s": {r["bytes"]: round(r["seconds"], 2) for r in final["rounds"]},
        "adapter_stage_s": [round(a["seconds"], 2) for a in final["adapter"]],
        "after_kill_s": round(after["seconds"], 1),
        "total_s": round(t_end, 1),
        "timings": {k: round(v, 2) for k, v in cluster.timings.items()},
    }
    (tmp_path / "numbers.json").write_text(json.dumps(numbers, indent=1))
    print("\nflower runtime:", json.dumps(numbers, indent=1))


# --- the draft adapter's pure core (fast, no Flower processes) ------------------------------------
FED = "ab" * 32
SESSION = bytes(range(16))


class FakeLink:
    """Answers like ClientApps would, except the misbehaving nodes named at construction."""

    def __init__(self, silent: set[int], garbage: set[int], wrong_stage: set[int]) -> None:
        self.silent, self.garbage, self.wrong_stage = silent, garbage, wrong_stage
        self.names = {1: "bank-a", 2: "bank-b", 3: "bank-c", 4: "bank-d"}
        self.calls: list[tuple[dict[int, bytes], float]] = []

    def round_trip(self, payloads: Mapping[int, bytes], timeout_s: float) -> dict[int, bytes]:
        self.calls.append((dict(payloads), timeout_s))
        out: dict[int, bytes] = {}
        for nid, data in payloads.items():
            if nid in self.silent:
                continue
            if nid in self.garbage:
                out[nid] = b"\xc1not msgpack"
                continue
            def handler(env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
                return env.payload[::-1], b""
            reply, _ = handle_client_message(data, None, member=self.names[nid],
                                             federation=FED, handler=handler)
            if nid in self.wrong_stage:
                env = decode_envelope(reply)
                reply = encode_envelope(msgspec.structs.replace(env, stage="other"))
            out[nid] = reply
        return out


def _exchange(link: FakeLink) -> StageExchange:
    return StageExchange(link=link, federation=FED, session=SESSION, server="agg",
                         nodes={"bank-a": 1, "bank-b": 2, "bank-c": 3, "bank-d": 4},
                         timeout_s=7.0)


def test_stage_exchange_maps_replies_and_dropouts() -> None:
    link = FakeLink(silent={2}, garbage={3}, wrong_stage={4})
    ex = _exchange(link)
    res = ex.exchange(5, "share-keys", {"bank-a": b"abc", "bank-b": b"x", "bank-c": b"y",
                                        "bank-d": b"z", "bank-e": b"w"})
    assert res.replies == {"bank-a": b"cba"}
    assert res.dropped == {"bank-b": "no reply within 7 s",
                           "bank-c": "malformed reply (SFL303)",
                           "bank-d": "reply for another federation, session, round, stage or "
                                     "member",
                           "bank-e": "not connected"}
    sent, timeout = link.calls[0]
    assert timeout == 7.0 and sorted(sent) == [1, 2, 3, 4]
    env = decode_envelope(sent[1])
    assert (env.federation, env.session, env.round, env.stage, env.sender, env.receiver,
            env.payload) == (FED, SESSION, 5, "share-keys", "agg", "bank-a", b"abc")


def test_client_refuses_envelope_for_another_member() -> None:
    env = Envelope(federation=FED, session=SESSION, round=0, stage="s", sender="agg",
                   receiver="bank-b", payload=b"")
    with pytest.raises(MessageError):
        handle_client_message(encode_envelope(env), None, member="bank-a", federation=FED,
                              handler=lambda e, s: (b"", b""))
    with pytest.raises(MessageError):
        handle_client_message(encode_envelope(env), None, member="bank-b", federation="cd" * 32,
                              handler=lambda e, s: (b"", b""))


def test_a_nodes_refusal_reaches_the_server_as_its_code_only() -> None:
    """Red-team finding L6: Flower replies with the exception's text, and a message may quote the
    bank's own data (a CSV cell); only the type and code leave the node."""
    from securefl.errors import DataError

    env = Envelope(federation=FED, session=SESSION, round=0, stage="s", sender="agg",
                   receiver="bank-a", payload=b"")

    def refuse(e: Envelope, s: bytes | None) -> tuple[bytes, bytes]:
        raise DataError("cannot read the bank data: could not convert '4711.23 secret' to float")

    with pytest.raises(DataError) as info:
        handle_client_message(encode_envelope(env), None, member="bank-a", federation=FED,
                              handler=refuse)
    assert "SFL200" in str(info.value) and "4711" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_run_round_one_round_trip_per_stage() -> None:
    class Machine:
        def __init__(self) -> None:
            self.stages = ["advertise", "share", "unmask"]
            self.seen: list[tuple[str, list[str], list[str]]] = []

        def next_stage(self) -> tuple[str, Mapping[str, bytes]] | None:
            if not self.stages:
                return None
            return self.stages.pop(0), {"bank-a": b"1", "bank-b": b"2"}

        def receive(self, stage: str, replies: Mapping[str, bytes],
                    dropped: Collection[str]) -> None:
            self.seen.append((stage, sorted(replies), sorted(dropped)))

    link = FakeLink(silent={2}, garbage=set(), wrong_stage=set())
    machine = Machine()
    results = run_round(_exchange(link), machine, round_=1)
    assert [r.stage for r in results] == ["advertise", "share", "unmask"]
    assert len(link.calls) == 3
    assert machine.seen == [(s, ["bank-a"], ["bank-b"]) for s in ("advertise", "share", "unmask")]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_decode_envelope_rejects_garbage_with_message_error(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except MessageError:
        return
    assert encode_envelope(env) == data  # only a well-formed envelope decodes


def test_importing_the_adapter_does_not_import_flwr() -> None:
    code = "import sys, securefl.transport.flower; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
