"""A CKKS verifier: a contributing bank that recomputes the aggregate from the published
contributions and co-signs its digest (protocols/ckks/spec.md, steps 6 and 7). Stateless: one
VerifyRequest in, one CoSignature out (or a typed refusal)."""

from __future__ import annotations

from securefl.crypto.signing import SigningKey, VerifyKey, sign_bound
from securefl.errors import IntegrityError, RemoteProtocolError
from securefl.he.context import PublicContext
from securefl.he.vectors import ciphertext_digest, ciphertext_digests, sum_chunks
from securefl.protocol.ckks.canonical import (
    cosign_message,
    eligible_verifiers,
    manifest_digest,
)
from securefl.protocol.ckks.checks import check_entries
from securefl.protocol.ckks.config import DEFAULT_VERIFIER_SKIPS, DOMAIN_COSIGN, IdentityKeys
from securefl.protocol.ckks_messages import CoSignature, VerifyRequest

__all__ = ["CKKSVerifier"]


class CKKSVerifier:
    """A client that recomputes the aggregate from the published contributions and co-signs it.

    It co-signs only if it is among the first ``verifiers + verifier_skips`` contributors ranked by
    the closed commitment set's hash, and (when it contributed) only the commitment set it revealed
    under.
    """

    def __init__(
        self,
        client_id: int,
        signing_key: SigningKey,
        context: PublicContext,
        federation: IdentityKeys,
        server_key: VerifyKey,
        *,
        min_clients: int,
        verifiers: int = 2,
        verifier_skips: int = DEFAULT_VERIFIER_SKIPS,
    ) -> None:
        self.client_id = client_id
        self._key = signing_key
        self.context = context
        self.federation = dict(federation)
        self.server_key = server_key
        self.min_clients = min_clients
        self.verifiers = verifiers
        self.verifier_skips = verifier_skips

    def verify(
        self,
        req: VerifyRequest,
        *,
        session_id: bytes,
        round_: int,
        revealed_under: bytes | None = None,
    ) -> CoSignature:
        """Check and co-sign. ``revealed_under``: the digest of the commitment set this client
        revealed its own contribution under (``CKKSClient.revealed_under``), if it contributed."""
        m = req.manifest
        if (m.session_id, m.round) != (session_id, round_):
            raise RemoteProtocolError("the manifest is for another session or round")
        set_digest = check_entries(
            m, self.federation, self.server_key, self.min_clients, self.context.digest
        )
        if revealed_under is not None and revealed_under != set_digest:
            raise RemoteProtocolError(
                "the manifest's commitment set differs from the one this client was shown"
            )
        if self.client_id not in eligible_verifiers(m, self.verifiers, self.verifier_skips):
            raise RemoteProtocolError(
                "this client is not among the verifiers drawn from the closed commitment set"
            )
        if len(req.contributions) != len(m.entries):
            raise RemoteProtocolError("the request must carry one chunk list per manifest entry")

        digests = ciphertext_digests(req.contributions)
        for entry, digest in zip(m.entries, digests, strict=True):
            if digest != entry.digest:
                raise IntegrityError(
                    f"client {entry.client_id}'s ciphertext does not match its digest"
                )
        total = sum_chunks(self.context, req.contributions, m.num_values)
        if ciphertext_digest(total) != m.aggregate_digest:
            raise IntegrityError("the recomputed sum differs from the manifest's aggregate digest")
        mdig = manifest_digest(m)
        sig = sign_bound(
            self._key,
            domain=DOMAIN_COSIGN,
            session_id=m.session_id,
            round_=m.round,
            message=cosign_message(self.client_id, mdig),
        )
        return CoSignature(
            session_id=m.session_id,
            round=m.round,
            verifier_id=self.client_id,
            manifest_digest=mdig,
            signature=sig,
        )
