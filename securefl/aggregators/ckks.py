"""The in-process ``ckks`` driver: homomorphic sum under a separate key holder's CKKS key (TenSEAL).

:class:`CKKSAggregator` runs a whole round in process through the sans-IO roles of
securefl.protocol.ckks, encoding and decoding every message with size limits as a transport would.
A key holder's key files (``securefl keys ckks --out DIR``) are :mod:`securefl.keyholder`'s.

Dropout stages: ``"contribution"`` (the client never commits: it is simply not in the sum),
``"reveal"`` (it committed but never reveals its ciphertext: it is in the closed commitment set but
not in the sum) and ``"verification"`` (it contributed but does not co-sign); any other stage name is
treated as ``"contribution"``.

Deadlines (``deadlines``, securefl.transport.policy; the link is
:class:`securefl.transport.inprocess_ckks.CKKSLink`): a bank that never answers, or answers after
``stage_s``, is a dropout at that stage with the meaning above (its late message is discarded
unread): a late commitment leaves it out of the commitment set and the sum; a late reveal, or a
bank that waited more than ``bank_wait_s`` for the closed set and gave up (FAILED: its ciphertext
never leaves it), leaves it in the closed set but out of the sum; a late co-signature, or a drawn
verifier that gave up waiting for the request, is skipped for the next drawn verifier (its
ciphertext stays in the sum). CKKS has no threshold to lower: the sum is released only from at
least :func:`securefl.protocol.plan.min_survivors` contributions (the threshold raised to the
noise plan's min_survivors, checked by the server and again by the key holder), and the FedAvg
weight slot and the ledger count exactly the contributions in it, so every released sum carries
at least the planned noise; fewer contributions, or fewer verifiers than required, abort the
round (DeadlineError, SFL311, when a missed deadline was among the causes). A key holder that
misses the deadline for the round key or for the release aborts the round with DeadlineError (a
late release is discarded unread).

Keys: the aggregator's key holder makes a fresh CKKS key for every round
(``CKKSKeyHolder.round_context``), so a key that leaks opens that round only and a ciphertext
replayed from an earlier round decrypts to noise. Trust: the mode protects updates only while every
bank encrypts honestly (:data:`TRUST_ASSUMPTION`; protocols/ckks/spec.md, "Trust assumption").

Identities: enrolled Ed25519 keys can be passed (``identities`` for the clients, ``server_identity``
for the server); by default (simulation) they are derived from ``random(client, "identity")`` and
``random(-1, "server-identity")``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from securefl.aggregators.base import (
    AggregateOutcome,
    Aggregator,
    Inputs,
    RandomFactory,
    participant_identities,
)
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.errors import AggregationAbortedError, ConfigError, DeadlineError
from securefl.he.flooding import DEFAULT_MAX_QUERIES, DEFAULT_STATISTICAL_SECURITY
from securefl.he.params import DEFAULT_PARAMS, CKKSParams
from securefl.protocol.ckks import (
    DEFAULT_VERIFIER_SKIPS,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    accept_public_context,
    commitment_set_digest,
    round_plan_digest,
    split_weight_slot,
)
from securefl.protocol.ckks_messages import (
    Commitment,
    CommitmentSet,
    Contribution,
    CoSignature,
    DecryptionRequest,
    DecryptionResult,
    SignedPublicContext,
    VerifyRequest,
    max_commitment_set_bytes,
    max_message_bytes,
)
from securefl.protocol.plan import check_release, min_survivors
from securefl.transport.inprocess_ckks import KEY_HOLDER, SERVER, CKKSLink
from securefl.transport.policy import Deadlines, deadline_abort

if TYPE_CHECKING:
    from securefl.protocol.plan import RoundSpec
    from securefl.transport.inprocess import Tamper

__all__ = ["TRUST_ASSUMPTION", "CKKSAggregator"]

T = TypeVar("T")

#: the mode's trust assumption, printed by `securefl run --aggregation ckks`
#: (protocols/ckks/spec.md, "Trust assumption"; tests/test_ckks_malicious_bank.py shows the attack)
TRUST_ASSUMPTION = (
    "ckks hides each update from the server and the key holder only while EVERY bank encrypts "
    "honestly: one bank sending a malformed ciphertext can extract the round's CKKS key and read "
    "the others' updates (no practical proof of well-formed encryption exists); keys are fresh "
    "per round; use secagg if a bank may deviate"
)

class CKKSAggregator(Aggregator):
    """Homomorphic sum with a separate key holder, a commit phase, verifier co-signatures and noise
    flooding."""

    name = "ckks"
    stages = ("contribution", "reveal", "verification")
    secure = True

    def __init__(
        self,
        params: CKKSParams = DEFAULT_PARAMS,
        *,
        verifiers: int = 2,
        verifier_skips: int = DEFAULT_VERIFIER_SKIPS,
        max_queries: int = DEFAULT_MAX_QUERIES,
        statistical_security: int = DEFAULT_STATISTICAL_SECURITY,
        identities: Mapping[int, SigningKey] | None = None,
        server_identity: SigningKey | None = None,
        deadlines: Deadlines | None = None,
        tamper: Tamper | None = None,
    ) -> None:
        if verifiers < 1 or verifier_skips < 0:
            raise ConfigError("verifiers must be >= 1 and verifier_skips >= 0")
        self.params = params
        self.verifiers = verifiers
        self.verifier_skips = verifier_skips
        self.max_queries = max_queries
        self.statistical_security = statistical_security
        self.identities = dict(identities) if identities is not None else None
        self.server_identity = server_identity
        #: per-stage deadlines of the in-process link (securefl.transport.policy); None: none
        self.deadlines = deadlines
        #: tamper(stage, sender, recipient, data) -> data: tests play the network with it
        #: (securefl.transport.inprocess_ckks.CKKSLink)
        self.tamper = tamper
        self._holder: CKKSKeyHolder | None = None

    def _identities(self, spec: RoundSpec, random: RandomFactory) -> dict[int, SigningKey]:
        return participant_identities(spec, random, self.identities)

    def _server_identity(self, random: RandomFactory) -> SigningKey:
        if self.server_identity is not None:
            return self.server_identity
        return SigningKey.from_seed(Secret(random(-1, "server-identity").random_bytes(32)))

    def _key_holder(
        self, federation: Mapping[int, VerifyKey], min_clients: int, server_key: VerifyKey
    ) -> CKKSKeyHolder:
        """The aggregator's key holder (created once: its replay set persists). It makes fresh
        CKKS keys for every round (``CKKSKeyHolder.round_context``)."""
        if self._holder is None:
            self._holder = CKKSKeyHolder(
                SigningKey.generate(),
                None,
                federation,
                params=self.params,
                min_clients=min_clients,
                verifiers=self.verifiers,
                max_queries=self.max_queries,
                statistical_security=self.statistical_security,
                server_key=server_key,
                verifier_skips=self.verifier_skips,
            )
        self._holder.federation.update(federation)
        self._holder.min_clients = min_clients
        self._holder.server_key = server_key
        return self._holder

    def run_round(self, spec: RoundSpec, inputs: Inputs, dim: int, *, random: RandomFactory,
                  dropouts: dict[int, str]) -> AggregateOutcome:
        ids = sorted(spec.participants)
        keys = self._identities(spec, random)
        federation = {cid: k.verify_key for cid, k in keys.items()}
        server_key = self._server_identity(random)
        # the fewest contributions the server and the key holder accept: the threshold raised to
        # the noise plan's min_survivors, so a sum with less than the planned noise is never
        # decrypted (securefl.protocol.plan.min_survivors, as SecAgg's threshold)
        floor = min_survivors(spec)
        holder = self._key_holder(federation, floor, server_key.verify_key)
        params = self.params
        # FedAvg rounds carry each client's weight in one extra encrypted slot
        slots = dim + 1 if spec.weights is not None else dim
        ct_bytes, n_chunks = params.ciphertext_max_bytes(), params.num_chunks(slots)
        bytes_sent: dict[str, int] = {}
        link = CKKSLink(self.deadlines if self.deadlines is not None else Deadlines(), self.tamper)
        session, round_ = spec.session_id, spec.round

        # 0. a fresh key for this round, signed for (session, round): a key that leaks opens this
        # round only, and a ciphertext replayed from an earlier round decrypts to noise. A key
        # holder that misses the deadline aborts the round before anything is encrypted.
        t0 = link.now()
        pub_msg, size = link.reply("context", KEY_HOLDER, holder.round_context(session, round_),
                                   SignedPublicContext, 32 * 2**20, since=t0)
        bytes_sent["key_holder"] = size
        if pub_msg is None:
            raise DeadlineError(f"{link.refused[KEY_HOLDER].message}: no round key, nothing was "
                                "encrypted")
        public = accept_public_context(
            pub_msg, holder.verify_key, params, session_id=session, round_=round_
        )

        share_std = 0.0
        if spec.noise is not None and spec.noise.noise_multiplier > 0:
            share_std = spec.noise.share_std(spec.clip_norm)  # z C / sqrt(honest floor)
        server = CKKSServer(
            public,
            federation,
            server_key,
            session_id=session,
            round_=round_,
            num_values=slots,
            participants=tuple(ids),
            min_clients=floor,
            verifiers=self.verifiers,
        )
        stage = {c: dropouts[c] if dropouts[c] in self.stages else "contribution" for c in dropouts}
        # the round plan every bank signs into its commitment (S8-1): here all share one spec
        plan = round_plan_digest(spec)
        # 1. commit: no ciphertext leaves a client before the commitment set is closed
        clients: dict[int, CKKSClient] = {}
        for cid in ids:
            if stage.get(cid) == "contribution":
                continue
            t0 = link.now()
            client = CKKSClient(cid, keys[cid], public, server_key.verify_key)
            commitment = client.commit(
                session_id=session,
                round_=round_,
                values=np.asarray(inputs[cid], dtype=np.float64),
                clip_norm=spec.clip_norm,
                num_participants=len(ids),
                noise_std=share_std,
                random=random(cid, "noise"),
                plan_digest=plan,
                weight=spec.weight_of(cid) if spec.weights is not None else None,
            )
            msg, size = link.reply("contribution", cid, commitment, Commitment,
                                   max_commitment_set_bytes(1), since=t0)
            bytes_sent[f"client/{cid}"] = size
            if msg is not None:  # a late commitment is discarded: that bank is not in the set
                server.receive_commitment(msg)
                clients[cid] = client
        # 2. the server closes and signs the set; every committed client receives it
        # (a bank's wait for the server's message: the server's closing step plus that message's
        # own transit; the server sends it to every bank at once)
        t0 = link.now()
        cset = _abort_if_late(link, server.close_commitments)
        closing = link.now() - t0
        bytes_sent["server/commitment_set"] = 0
        # 3. reveal
        for cid, client in clients.items():
            shown, size = link.forward(
                "reveal", cid, cset, CommitmentSet, max_commitment_set_bytes(len(ids)),
                since=link.now() - closing, give_up=partial(client.give_up, session, round_))
            bytes_sent["server/commitment_set"] += size
            if shown is None or stage.get(cid) == "reveal":
                continue  # in the closed set, not in the sum
            t1 = link.now()
            reveal, size = link.reply("reveal", cid, client.reveal(shown), Contribution,
                                      max_message_bytes(ct_bytes, n_chunks), since=t1)
            bytes_sent[f"client/{cid}"] += size
            if reveal is not None:
                server.receive_contribution(reveal)

        t0 = link.now()
        manifest = _abort_if_late(link, server.close)
        closing = link.now() - t0
        survivors = tuple(e.client_id for e in manifest.entries)
        check_release(spec, len(survivors))
        req_bytes = (max_message_bytes(ct_bytes, n_chunks, len(survivors))
                     + max_commitment_set_bytes(len(ids)))
        # 4. verifiers: the first contributors that answer in time, in the order drawn from the
        # closed set; a late one is skipped (its ciphertext stays in the sum)
        window = server.verifier_ranking()[: self.verifiers + self.verifier_skips]
        signed = 0
        for vid in window:
            if signed == self.verifiers:
                break
            if vid in stage:
                continue
            req, size = link.forward("verification", vid, server.verify_request(), VerifyRequest,
                                     req_bytes, since=link.now() - closing,
                                     give_up=partial(clients[vid].give_up, session, round_))
            bytes_sent["server/verify_request"] = size
            if req is None:
                continue
            t1 = link.now()
            verifier = CKKSVerifier(
                vid,
                keys[vid],
                public,
                federation,
                server_key.verify_key,
                min_clients=floor,
                verifiers=self.verifiers,
                verifier_skips=self.verifier_skips,
            )
            cosig = verifier.verify(req, session_id=session, round_=round_,
                                    revealed_under=clients[vid].revealed_under[(session, round_)])
            cs, size = link.reply("verification", vid, cosig, CoSignature, 4096, since=t1)
            bytes_sent[f"verifier/{vid}"] = size
            if cs is None:
                continue
            server.receive_cosignature(cs)
            signed += 1
        if signed < self.verifiers:
            raise deadline_abort(AggregationAbortedError(
                f"only {signed} of the {len(window)} drawn verifiers answered; "
                f"{self.verifiers} required"), link.late())

        # 5. the key holder decrypts the aggregate once; a release that misses the deadline is
        # discarded unread and the round aborts
        t0 = link.now()
        dreq, size = link.carry(
            "release", SERVER, KEY_HOLDER, server.decryption_request(), DecryptionRequest,
            max_message_bytes(ct_bytes, n_chunks, 2)
            + 4096 * self.verifiers
            + max_commitment_set_bytes(len(ids)),
        )
        bytes_sent["server/decrypt_request"] = size
        res, size = link.reply("release", KEY_HOLDER,
                               holder.decrypt(dreq, random(-1, "ckks-flooding")),
                               DecryptionResult, 8 * slots + 65536, since=t0)
        bytes_sent["key_holder/release"] = bytes_sent["key_holder"] + size
        if res is None:
            raise DeadlineError(f"{link.refused[KEY_HOLDER].message}: the release was discarded "
                                "unread, nothing is released")
        total = server.receive_result(res, holder.verify_key)
        weight_total = None
        if spec.weights is not None:
            total, weight_total = split_weight_slot(
                total, (spec.weight_of(c) for c in survivors), params=params,
                num_summands=len(survivors), max_queries=self.max_queries)

        digests = {f"input/{e.client_id}": e.digest.hex() for e in manifest.entries}
        digests["aggregate"] = manifest.aggregate_digest.hex()
        digests["commitment_set"] = commitment_set_digest(manifest.commitment_set).hex()
        digests["release"] = hashlib.sha256(res.values).hexdigest()
        return AggregateOutcome(
            total=total,
            survivors=survivors,
            dropouts={**link.faults, **dropouts},
            noise_std=share_std * math.sqrt(len(survivors)),
            digests=digests,
            bytes_sent=bytes_sent,
            weight_total=weight_total,
        )


def _abort_if_late(link: CKKSLink, close: Callable[[], T]) -> T:
    """The server's ``close`` step; when it aborts the round (too few parties) and parties that
    missed a deadline were among the missing, the error is a DeadlineError naming them."""
    try:
        return close()
    except AggregationAbortedError as err:
        aborted = deadline_abort(err, [p for p in link.late() if p != KEY_HOLDER])
        if aborted is err:
            raise
        raise aborted from err
