"""The in-process ``ckks`` driver: homomorphic sum under a separate key holder's CKKS key (TenSEAL).

:class:`CKKSAggregator` runs a whole round in process through the sans-IO roles of
securefl.protocol.ckks, encoding and decoding every message with size limits as a transport would.
A key holder's key files (``securefl keys ckks --out DIR``) are :mod:`securefl.keyholder`'s.

Dropout stages: ``"contribution"`` (the client never commits: it is simply not in the sum),
``"reveal"`` (it committed but never reveals its ciphertext: it is in the closed commitment set but
not in the sum) and ``"verification"`` (it contributed but does not co-sign); any other stage name is
treated as ``"contribution"``.

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
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from securefl.aggregators.base import (
    AggregateOutcome,
    Aggregator,
    RandomFactory,
    check_inputs,
    participant_identities,
)
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, VerifyKey
from securefl.errors import AggregationAbortedError, ConfigError
from securefl.he.flooding import DEFAULT_MAX_QUERIES, DEFAULT_STATISTICAL_SECURITY
from securefl.he.params import DEFAULT_PARAMS, CKKSParams
from securefl.protocol import wire
from securefl.protocol.ckks import (
    DEFAULT_VERIFIER_SKIPS,
    CKKSClient,
    CKKSKeyHolder,
    CKKSServer,
    CKKSVerifier,
    accept_public_context,
    commitment_set_digest,
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

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.protocol.plan import RoundSpec

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

def _wire(msg: Any, typ: type[T], max_bytes: int) -> tuple[T, int]:
    """Encode then decode (size-checked) as a transport would; return (message, bytes on the
    wire)."""
    data = wire.encode(msg)
    return wire.decode(data, typ, max_bytes=max_bytes), len(data)


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

    def aggregate(
        self,
        spec: RoundSpec,
        inputs: Mapping[int, NDArray[np.float64]],
        *,
        random: RandomFactory,
        dropouts: Mapping[int, str] | None = None,
    ) -> AggregateOutcome:
        dropouts = dict(dropouts or {})
        dim = check_inputs(spec, inputs)
        ids = sorted(spec.participants)
        keys = self._identities(spec, random)
        federation = {cid: k.verify_key for cid, k in keys.items()}
        server_key = self._server_identity(random)
        holder = self._key_holder(federation, spec.threshold, server_key.verify_key)
        params = self.params
        # FedAvg rounds carry each client's weight in one extra encrypted slot
        slots = dim + 1 if spec.weights is not None else dim
        ct_bytes, n_chunks = params.ciphertext_max_bytes(), params.num_chunks(slots)
        bytes_sent: dict[str, int] = {}

        # a fresh key for this round, signed for (session, round): a key that leaks opens this
        # round only, and a ciphertext replayed from an earlier round decrypts to noise
        pub_msg, size = _wire(
            holder.round_context(spec.session_id, spec.round), SignedPublicContext, 32 * 2**20
        )
        bytes_sent["key_holder"] = size
        public = accept_public_context(
            pub_msg, holder.verify_key, params, session_id=spec.session_id, round_=spec.round
        )

        share_std = 0.0
        if spec.noise is not None and spec.noise.noise_multiplier > 0:
            share_std = spec.noise.share_std(spec.clip_norm)  # z C / sqrt(honest floor)
        server = CKKSServer(
            public,
            federation,
            server_key,
            session_id=spec.session_id,
            round_=spec.round,
            num_values=slots,
            participants=tuple(ids),
            min_clients=spec.threshold,
            verifiers=self.verifiers,
        )
        stage = {c: dropouts[c] if dropouts[c] in self.stages else "contribution" for c in dropouts}
        # 1. commit: no ciphertext leaves a client before the commitment set is closed
        clients: dict[int, CKKSClient] = {}
        for cid in ids:
            if stage.get(cid) == "contribution":
                continue
            client = CKKSClient(cid, keys[cid], public, server_key.verify_key)
            commitment = client.commit(
                session_id=spec.session_id,
                round_=spec.round,
                values=np.asarray(inputs[cid], dtype=np.float64),
                clip_norm=spec.clip_norm,
                num_participants=len(ids),
                noise_std=share_std,
                random=random(cid, "noise"),
                weight=spec.weight_of(cid) if spec.weights is not None else None,
            )
            msg, size = _wire(commitment, Commitment, max_commitment_set_bytes(1))
            bytes_sent[f"client/{cid}"] = size
            server.receive_commitment(msg)
            clients[cid] = client
        # 2. the server closes and signs the set; every committed client receives it
        cset = server.close_commitments()
        bytes_sent["server/commitment_set"] = 0
        # 3. reveal
        for cid, client in clients.items():
            shown, size = _wire(cset, CommitmentSet, max_commitment_set_bytes(len(ids)))
            bytes_sent["server/commitment_set"] += size
            if stage.get(cid) == "reveal":
                continue
            reveal, size = _wire(
                client.reveal(shown), Contribution, max_message_bytes(ct_bytes, n_chunks)
            )
            bytes_sent[f"client/{cid}"] += size
            server.receive_contribution(reveal)

        manifest = server.close()
        survivors = tuple(e.client_id for e in manifest.entries)
        req, size = _wire(
            server.verify_request(),
            VerifyRequest,
            max_message_bytes(ct_bytes, n_chunks, len(survivors))
            + max_commitment_set_bytes(len(ids)),
        )
        bytes_sent["server/verify_request"] = size
        # 4. verifiers: the first contributors that answer, in the order drawn from the closed set
        window = server.verifier_ranking()[: self.verifiers + self.verifier_skips]
        verifier_ids = [c for c in window if c not in stage][: self.verifiers]
        if len(verifier_ids) < self.verifiers:
            raise AggregationAbortedError(
                f"only {len(verifier_ids)} of the {len(window)} drawn verifiers answered; "
                f"{self.verifiers} required"
            )
        for vid in verifier_ids:
            verifier = CKKSVerifier(
                vid,
                keys[vid],
                public,
                federation,
                server_key.verify_key,
                min_clients=spec.threshold,
                verifiers=self.verifiers,
                verifier_skips=self.verifier_skips,
            )
            cs, size = _wire(
                verifier.verify(
                    req,
                    session_id=spec.session_id,
                    round_=spec.round,
                    revealed_under=clients[vid].revealed_under[(spec.session_id, spec.round)],
                ),
                CoSignature,
                4096,
            )
            bytes_sent[f"verifier/{vid}"] = size
            server.receive_cosignature(cs)

        dreq, size = _wire(
            server.decryption_request(),
            DecryptionRequest,
            max_message_bytes(ct_bytes, n_chunks, 2)
            + 4096 * len(verifier_ids)
            + max_commitment_set_bytes(len(ids)),
        )
        bytes_sent["server/decrypt_request"] = size
        result = holder.decrypt(dreq, random(-1, "ckks-flooding"))
        res, size = _wire(result, DecryptionResult, 8 * slots + 65536)
        bytes_sent["key_holder/release"] = bytes_sent["key_holder"] + size
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
            dropouts={c: s for c, s in dropouts.items()},
            noise_std=share_std * math.sqrt(len(survivors)),
            digests=digests,
            bytes_sent=bytes_sent,
            weight_total=weight_total,
        )
