"""Sans-IO CKKS aggregation: key holder, client, server and verifier (protocols/ckks/spec.md).

No I/O, no clock, no global RNG: randomness is an injected RandomSource; messages are the Structs of
securefl.protocol.ckks_messages. The flow of one round:

1. key holder -> all: SignedPublicContext (public key only, Ed25519-signed; a fresh key per round
   signed for that round, or the long-lived key).
2. client -> server: Commitment = sha256 of its ciphertext's digest bound to (session, round, id,
   size, key digest), signed. No ciphertext is revealed yet.
3. server -> committed clients: CommitmentSet, the closed set of commitments under the round's key,
   signed by the server.
4. client -> server: Contribution (the reveal) = Enc(w_i clip(delta_i) + DP noise share), signed over
   its digest AND the digest of the closed commitment set it was shown. A ciphertext chosen after
   seeing another client's ciphertext cannot match a commitment made before the set closed, so the
   rogue-ciphertext attack (submit -ct_B to isolate client C) is refused.
5. server: checks each reveal against its commitment, sums homomorphically, publishes a Manifest;
   verifiers are ranked by a hash of the closed commitment set and each gets a VerifyRequest.
6. verifier (a client): re-checks every commitment and contribution, recomputes the sum, co-signs.
7. server -> key holder: DecryptionRequest (aggregate + manifest + co-signatures), never an
   individual ciphertext. The key holder decrypts once per (session, round), only with >=
   min_clients distinct enrolled contributions that match commitments in one server-signed set
   under the round's key and all bind that set, and >= verifiers co-signatures from eligible
   verifiers, then floods and rounds (Li-Micciancio, EUROCRYPT 2021; see securefl.he.flooding)
   and signs the release.

Trust: every bank must encrypt honestly (spec.md "Trust assumption"; no proof of well-formed
encryption is checked, and tests/test_ckks_malicious_bank.py shows one malformed ciphertext
leaking the round's key).

Layout (each role's behaviour is one transition table; the spec's diagram is generated from them
by protocols/ckks/gen_diagram.py):

- :mod:`securefl.protocol.ckks.config`      signature domains, IdentityKeys, DecryptionRefusedError
- :mod:`securefl.protocol.ckks.canonical`   the byte strings that are signed or hashed; ranking
- :mod:`securefl.protocol.ckks.encoding`    overflow bound and the FedAvg weight slot
- :mod:`securefl.protocol.ckks.checks`      context, commitment-set, manifest and co-signature checks
- :mod:`securefl.protocol.ckks.machine`     Transition and the table lookup
- :mod:`securefl.protocol.ckks.key_holder`  CKKSKeyHolder and KEY_HOLDER_TRANSITIONS
- :mod:`securefl.protocol.ckks.client`      CKKSClient, ClientRoundState and CLIENT_TRANSITIONS
- :mod:`securefl.protocol.ckks.server`      CKKSServer and SERVER_TRANSITIONS
- :mod:`securefl.protocol.ckks.verifier`    CKKSVerifier (stateless)
"""

from __future__ import annotations

from securefl.protocol.ckks.canonical import (
    commitment_message,
    commitment_set_digest,
    commitment_value,
    context_message,
    contribution_message,
    cosign_message,
    eligible_verifiers,
    key_id_for,
    manifest_digest,
    release_message,
    round_plan_digest,
    verifier_ranking,
)
from securefl.protocol.ckks.checks import (
    accept_public_context,
    check_commitment_set,
    verify_cosignature,
)
from securefl.protocol.ckks.client import (
    CLIENT_TRANSITIONS,
    CKKSClient,
    ClientRoundState,
    ClientState,
)
from securefl.protocol.ckks.config import (
    DEFAULT_VERIFIER_SKIPS,
    DOMAIN_COMMITMENT,
    DOMAIN_COMMITMENT_SET,
    DOMAIN_CONTEXT,
    DOMAIN_CONTRIBUTION,
    DOMAIN_COSIGN,
    DOMAIN_PLAN_CONTEXT,
    DOMAIN_RELEASE,
    DOMAIN_ROUND_CONTEXT,
    DecryptionRefusedError,
    IdentityKeys,
)
from securefl.protocol.ckks.encoding import noise_bound, split_weight_slot
from securefl.protocol.ckks.key_holder import (
    KEY_HOLDER_TRANSITIONS,
    CKKSKeyHolder,
    KeyHolderState,
)
from securefl.protocol.ckks.server import SERVER_TRANSITIONS, CKKSServer, ServerState
from securefl.protocol.ckks.verifier import CKKSVerifier

__all__ = [
    "CLIENT_TRANSITIONS",
    "DEFAULT_VERIFIER_SKIPS",
    "DOMAIN_COMMITMENT",
    "DOMAIN_COMMITMENT_SET",
    "DOMAIN_CONTEXT",
    "DOMAIN_CONTRIBUTION",
    "DOMAIN_COSIGN",
    "DOMAIN_PLAN_CONTEXT",
    "DOMAIN_RELEASE",
    "DOMAIN_ROUND_CONTEXT",
    "KEY_HOLDER_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "CKKSClient",
    "CKKSKeyHolder",
    "CKKSServer",
    "CKKSVerifier",
    "ClientRoundState",
    "ClientState",
    "DecryptionRefusedError",
    "IdentityKeys",
    "KeyHolderState",
    "ServerState",
    "accept_public_context",
    "check_commitment_set",
    "commitment_message",
    "commitment_set_digest",
    "commitment_value",
    "context_message",
    "contribution_message",
    "cosign_message",
    "eligible_verifiers",
    "key_id_for",
    "manifest_digest",
    "noise_bound",
    "release_message",
    "round_plan_digest",
    "split_weight_slot",
    "verifier_ranking",
    "verify_cosignature",
]
