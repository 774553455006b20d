"""The CKKS roles' transition tables: every (state, input) pair not in a table is refused with the
documented error and changes nothing; the pairs in it are the ones the honest flow uses; the spec's
diagram is generated from the tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.errors import RemoteProtocolError, SecureFLError, StateError
from securefl.he.params import DEFAULT_PARAMS
from securefl.protocol.ckks import (
    CLIENT_TRANSITIONS,
    KEY_HOLDER_TRANSITIONS,
    SERVER_TRANSITIONS,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    ClientState,
    DecryptionRefusedError,
    KeyHolderState,
    ServerState,
    accept_public_context,
)
from securefl.protocol.ckks.client import CommitRequest
from securefl.protocol.ckks.key_holder import RoundKeyRequest
from securefl.protocol.ckks.server import CloseCommitments, CloseReveals
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentSet,
    Contribution,
    CoSignature,
    DecryptionRequest,
    DecryptionResult,
    Manifest,
)

ROOT = Path(__file__).resolve().parents[1]
SESSION = b"machines-session"
D = 50
IDS = (1, 2, 3)


def _rand(label: str) -> SeededRandomSource:
    return SeededRandomSource(Secret(b"\x05" * 32), label)


def _dummy(typ: type) -> object:
    """An instance of an input type (content irrelevant: a refused pair is refused by type)."""
    z32, z64 = bytes(32), bytes(64)
    cset = CommitmentSet(session_id=SESSION, round=0, num_values=D, key_digest=z32, entries=[],
                         signature=z64)
    manifest = Manifest(session_id=SESSION, round=0, num_values=D, entries=[],
                        aggregate_digest=z32, commitment_set=cset)
    return {
        Commitment: Commitment(session_id=SESSION, round=0, client_id=1, num_values=D,
                               commitment=z32, plan_digest=z32, signature=z64),
        CommitmentSet: cset,
        Contribution: Contribution(session_id=SESSION, round=0, client_id=1, num_values=D,
                                   chunks=[b"x"], commitment_set_digest=z32, signature=z64),
        CoSignature: CoSignature(session_id=SESSION, round=0, verifier_id=1, manifest_digest=z32,
                                 signature=z64),
        DecryptionRequest: DecryptionRequest(manifest=manifest, aggregate=[b"x"],
                                             cosignatures=[]),
        DecryptionResult: DecryptionResult(session_id=SESSION, round=0, manifest_digest=z32,
                                           num_values=D, values=b"", flood_std=1.0, grid=1.0,
                                           signature=z64),
        CloseCommitments: CloseCommitments(),
        CloseReveals: CloseReveals(),
        RoundKeyRequest: RoundKeyRequest(SESSION, 0),
        CommitRequest: CommitRequest(SESSION, 0, np.zeros(D), 1.0, 3, 0.0, _rand("c"), None,
                                     z32),
    }[typ]


@pytest.fixture(scope="module")
def world():
    keys = {i: SigningKey.from_seed(Secret(bytes([60 + i]) * 32)) for i in IDS}
    fed = {i: k.verify_key for i, k in keys.items()}
    server_key = SigningKey.from_seed(Secret(b"\x61" * 32))
    holder = CKKSKeyHolder(SigningKey.from_seed(Secret(b"\x62" * 32)), None, fed, min_clients=3,
                           verifiers=2, server_key=server_key.verify_key, params=DEFAULT_PARAMS)
    public = accept_public_context(holder.round_context(SESSION, 0), holder.verify_key,
                                   DEFAULT_PARAMS, session_id=SESSION, round_=0)
    return {"keys": keys, "fed": fed, "server_key": server_key, "holder": holder,
            "public": public}


def _client(world, i: int) -> CKKSClient:
    return CKKSClient(i, world["keys"][i], world["public"], world["server_key"].verify_key)


def _commit(client: CKKSClient) -> Commitment:
    v = np.full(D, 0.1)
    return client.commit(session_id=SESSION, round_=0, values=v, clip_norm=1.0,
                         num_participants=len(IDS), noise_std=0.0, plan_digest=bytes(32), random=_rand("n"))


def _server_in(world, state: ServerState):
    """A server (and its clients) driven through the honest flow up to ``state``."""
    server = CKKSServer(world["public"], world["fed"], world["server_key"], session_id=SESSION,
                        round_=0, num_values=D, participants=IDS, min_clients=3, verifiers=2)
    clients = {i: _client(world, i) for i in IDS}
    if state is ServerState.COMMITTING:
        return server, clients
    for c in clients.values():
        server.receive_commitment(_commit(c))
    cset = server.close_commitments()
    if state is ServerState.REVEALING:
        return server, clients
    for c in clients.values():
        server.receive_contribution(c.reveal(cset))
    server.close()
    return server, clients


def _pairs(states, types, table):
    return [(s, t) for s in states for t in types if (s, t) not in table]


SERVER_INPUTS = (Commitment, Contribution, CoSignature, DecryptionResult, CloseCommitments,
                 CloseReveals)


@pytest.mark.parametrize(("state", "typ"), _pairs(ServerState, SERVER_INPUTS, SERVER_TRANSITIONS))
def test_server_refuses_every_pair_not_in_its_table(world, state, typ):
    server, _ = _server_in(world, state)
    before = server._data
    methods = {Commitment: server.receive_commitment, Contribution: server.receive_contribution,
               CoSignature: server.receive_cosignature,
               DecryptionResult: lambda m: server.receive_result(m, world["holder"].verify_key),
               CloseCommitments: lambda _: server.close_commitments(),
               CloseReveals: lambda _: server.close()}
    with pytest.raises(StateError, match=f"cannot accept {typ.__name__} while"):
        methods[typ](_dummy(typ))
    assert server.state is state and server._data is before  # nothing changed


@pytest.mark.parametrize(("state", "typ"),
                         _pairs(ClientState, (CommitRequest, CommitmentSet), CLIENT_TRANSITIONS))
def test_client_refuses_every_pair_not_in_its_table(world, state, typ):
    server, clients = _server_in(world, ServerState.REVEALING)
    client = clients[1]
    if state is ClientState.NEW:
        client = _client(world, 1)
    elif state is ClientState.REVEALED:
        client.reveal(server.close_commitments())
    elif state is ClientState.FAILED:  # gave up after committing: the ciphertext is dropped
        client.give_up(SESSION, 0)
        with pytest.raises(StateError, match="gave up"):
            client.export_round(SESSION, 0)
    assert client.state(SESSION, 0) is state
    expected: type[SecureFLError] = StateError if typ is CommitRequest else RemoteProtocolError
    msg = _dummy(typ)
    with pytest.raises(expected, match=f"cannot accept {typ.__name__} while {state.value}"):
        if typ is CommitRequest:
            _commit(client)
        else:
            client.reveal(msg)  # type: ignore[arg-type]
    assert client.state(SESSION, 0) is state


@pytest.mark.parametrize(
    ("state", "typ"),
    _pairs(KeyHolderState, (RoundKeyRequest, DecryptionRequest), KEY_HOLDER_TRANSITIONS))
def test_key_holder_refuses_every_pair_not_in_its_table(world, state, typ):
    """Only RELEASED has no entries: a released round gets neither a key nor a second release."""
    assert state is KeyHolderState.RELEASED
    holder = CKKSKeyHolder(SigningKey.generate(), None, world["fed"], min_clients=3,
                           verifiers=2, server_key=world["server_key"].verify_key,
                           params=DEFAULT_PARAMS)
    holder.restore_usage(0, [(SESSION, 0)])
    assert holder.state(SESSION, 0) is state
    with pytest.raises(StateError if typ is RoundKeyRequest else DecryptionRefusedError,
                       match="already decrypted"):
        if typ is RoundKeyRequest:
            holder.round_context(SESSION, 0)
        else:
            holder.decrypt(_dummy(typ), _rand("f"))  # type: ignore[arg-type]
    assert holder.state(SESSION, 0) is state


def test_the_honest_flow_walks_every_table_entry_it_needs(world):
    """The honest round, state by state, through the tables (the round key from ``world``)."""
    server, clients = _server_in(world, ServerState.COMMITTING)
    holder = world["holder"]
    assert holder.state(SESSION, 0) is KeyHolderState.KEYED
    assert all(c.state(SESSION, 0) is ClientState.NEW for c in clients.values())
    for c in clients.values():
        server.receive_commitment(_commit(c))
    assert {c.state(SESSION, 0) for c in clients.values()} == {ClientState.COMMITTED}
    cset = server.close_commitments()
    assert server.state is ServerState.REVEALING and server.close_commitments() == cset
    for c in clients.values():
        server.receive_contribution(c.reveal(cset))
    assert {c.state(SESSION, 0) for c in clients.values()} == {ClientState.REVEALED}
    manifest = server.close()
    assert server.state is ServerState.PUBLISHED and server.close() == manifest
    req = server.verify_request()
    for vid in server.verifier_ranking()[:2]:
        server.receive_cosignature(CKKSVerifier(
            vid, world["keys"][vid], world["public"], world["fed"],
            world["server_key"].verify_key, min_clients=3).verify(
                req, session_id=SESSION, round_=0,
                revealed_under=clients[vid].revealed_under[(SESSION, 0)]))
    res = holder.decrypt(server.decryption_request(), _rand("f"))
    assert holder.state(SESSION, 0) is KeyHolderState.RELEASED
    total = server.receive_result(res, holder.verify_key)
    assert np.allclose(total, np.full(D, 0.3), atol=1e-3)


def test_spec_diagram_is_generated_from_the_tables():
    proc = subprocess.run([sys.executable, str(ROOT / "protocols" / "ckks" / "gen_diagram.py"),
                           "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = (ROOT / "protocols" / "ckks" / "spec.md").read_text()
    for table in (CLIENT_TRANSITIONS, SERVER_TRANSITIONS, KEY_HOLDER_TRANSITIONS):
        for (state, event), tr in table.items():
            assert f"{state.name} --> {tr.next_state.name}: {event.__name__}" in spec


def test_a_round_key_is_exported_for_sealed_storage_and_restored_only_where_it_belongs() -> None:
    """A key holder node keeps a waiting round key in its sealed node state between messages
    (securefl.deploy.ckks.KeyHolderNode): the export is a redacted Secret, the restore gives the
    same round key back, and a restore over a keyed or released round, or of a context that is not
    this secret key's for that round, is refused."""
    from securefl.he.context import load_secret_context

    sk = SigningKey.generate()

    def holder() -> CKKSKeyHolder:
        return CKKSKeyHolder(sk, None, {}, params=DEFAULT_PARAMS, min_clients=1, verifiers=1)

    first = holder()
    signed = first.round_context(SESSION, 1)
    secret, same = first.export_round_key(SESSION, 1)
    assert same == signed and "redacted" in repr(secret)
    with pytest.raises(StateError):
        first.export_round_key(SESSION, 2)  # no key waits there
    again = holder()
    again.restore_round_key(SESSION, 1, load_secret_context(secret, DEFAULT_PARAMS), signed)
    assert again.state(SESSION, 1) is KeyHolderState.KEYED
    assert again.round_context(SESSION, 1) == signed  # the same key, not a new one
    with pytest.raises(StateError, match="already has a key"):
        again.restore_round_key(SESSION, 1, load_secret_context(secret, DEFAULT_PARAMS), signed)
    other = holder()
    with pytest.raises(StateError, match="not this round key's"):  # signed for round 1, not 2
        other.restore_round_key(SESSION, 2, load_secret_context(secret, DEFAULT_PARAMS), signed)
    foreign = holder().round_context(SESSION, 1)  # another secret key's context for round 1
    with pytest.raises(StateError, match="not this round key's"):
        other.restore_round_key(SESSION, 1, load_secret_context(secret, DEFAULT_PARAMS), foreign)
    other.restore_usage(0, {(SESSION, 3)})
    with pytest.raises(StateError, match="already has a key or a release"):
        other.restore_round_key(SESSION, 3, load_secret_context(secret, DEFAULT_PARAMS), signed)
