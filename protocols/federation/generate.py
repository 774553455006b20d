"""Generate protocols/federation/schemas/*.json and vectors/manifest.json.

The vector is a fully signed manifest of four members whose Ed25519 keys come from fixed seeds
(RFC 8032 signatures are deterministic, so regenerating gives identical bytes). It is checked by an
independent verifier in tests/test_federation_vectors.py (hashlib + json + `cryptography`).

    python protocols/federation/generate.py
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec

from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey
from securefl.federation import (
    Member,
    ProtocolParams,
    PublicIdentity,
    SignedManifest,
    canonical_body,
    create_manifest,
    manifest_digest,
    sign_manifest,
)
from securefl.schema import json_schema, render

HERE = Path(__file__).resolve().parent
#: the vector's data_schema is the SHA-256 of these bytes (an example; issue 18 defines the schema)
SCHEMA_EXAMPLE = b"example data schema"
MEMBERS = (("agg", "server", 0x01), ("bank-a", "client", 0x02), ("bank-b", "client", 0x03),
           ("bank-c", "client", 0x04))


def schemas() -> dict[str, dict[str, Any]]:
    return {"manifest": json_schema(SignedManifest), "identity": json_schema(PublicIdentity)}


def vectors() -> dict[str, Any]:
    keys = {name: SigningKey.from_seed(Secret(bytes([seed]) * 32)) for name, _, seed in MEMBERS}
    members = [Member(name=n, role=r, public_key=keys[n].verify_key.raw.hex())  # type: ignore[arg-type]
               for n, r, _ in MEMBERS]
    m = create_manifest("example-federation", members,
                        ProtocolParams(aggregation="secagg", threshold=2, neighbours=2,
                                       clip_norm=1.0, noise_multiplier=1.1,
                                       data_schema=hashlib.sha256(SCHEMA_EXAMPLE).hexdigest()))
    for n, _, _ in MEMBERS:
        m = sign_manifest(m, n, keys[n])
    return {
        "description": "fully signed manifest; member i's Ed25519 seed is 32 bytes of `seed`",
        "seeds": {n: f"{seed:02x}" * 32 for n, _, seed in MEMBERS},
        "canonical_body_hex": canonical_body(m.body).hex(),
        "body_sha256": manifest_digest(m.body),
        "manifest": msgspec.to_builtins(m),
    }


if __name__ == "__main__":
    for name, schema in schemas().items():
        (HERE / "schemas" / f"{name}.schema.json").write_text(render(schema), encoding="utf-8")
    (HERE / "vectors" / "manifest.json").write_text(render(vectors()), encoding="utf-8")
