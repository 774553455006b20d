"""CKKS protocol constants: signature domains, the federation's PKI type, the key holder's
refusal error (protocols/ckks/spec.md, "Signatures")."""

from __future__ import annotations

from collections.abc import Mapping

from securefl.crypto.signing import VerifyKey
from securefl.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_VERIFIER_SKIPS",
    "DOMAIN_COMMITMENT",
    "DOMAIN_COMMITMENT_SET",
    "DOMAIN_CONTEXT",
    "DOMAIN_CONTRIBUTION",
    "DOMAIN_COSIGN",
    "DOMAIN_PLAN_CONTEXT",
    "DOMAIN_RELEASE",
    "DOMAIN_ROUND_CONTEXT",
    "DecryptionRefusedError",
    "IdentityKeys",
]

DOMAIN_CONTEXT = "securefl/ckks/public-context/v1"
DOMAIN_ROUND_CONTEXT = "securefl/ckks/round-context/v1"
#: a round key bound to the signed training plan (Hello) it was made for (S7b-6)
DOMAIN_PLAN_CONTEXT = "securefl/ckks/round-context-plan/v1"
#: v2: the commitment and the round-plan digest it was made under (S8-1)
DOMAIN_COMMITMENT = "securefl/ckks/commitment/v2"
DOMAIN_COMMITMENT_SET = "securefl/ckks/commitment-set/v1"
DOMAIN_CONTRIBUTION = "securefl/ckks/contribution/v2"
DOMAIN_COSIGN = "securefl/ckks/aggregate-cosign/v1"
DOMAIN_RELEASE = "securefl/ckks/release/v1"

#: client id -> enrolled Ed25519 identity key (the federation manifest is the PKI)
IdentityKeys = Mapping[int, VerifyKey]

#: how many ranked verifiers may be skipped (dropped out) before the key holder refuses co-signers
DEFAULT_VERIFIER_SKIPS = 2


class DecryptionRefusedError(RemoteProtocolError):
    """The key holder refused to decrypt: missing signatures, co-signatures, or a replayed round."""

    code = "SFL312"
    default_hint = "nothing was decrypted or released for this round"

