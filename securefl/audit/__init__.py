"""Tamper-evident audit log (RFC 9162 Merkle tree, C2SP signed checkpoints) and the run directory.

- :mod:`securefl.audit.merkle`  RFC 9162 tree hashing, inclusion and consistency proofs
- :mod:`securefl.audit.note`    C2SP signed notes and tlog checkpoints (Ed25519)
- :mod:`securefl.audit.records` the leaves: GenesisRecord and RoundRecord, canonical JSON
- :mod:`securefl.audit.log`     AuditLog (server) and CheckpointKeeper (each client)
- :mod:`securefl.audit.store`   RunStore: the crash-safe run directory
- :mod:`securefl.audit.verify`  verify_run_dir, prove / verify_proof, show
- :mod:`securefl.audit.claims`  result.json's claims re-derived from the records and the ledger
"""

from __future__ import annotations

from securefl.audit.log import AuditLog, CheckpointKeeper, cosign_checkpoint
from securefl.audit.note import Checkpoint, NoteSigner, NoteVerifier
from securefl.audit.records import GenesisRecord, RoundRecord
from securefl.audit.store import RunStore
from securefl.audit.verify import VerifyReport, prove, show, verify_proof, verify_run_dir

__all__ = [
    "AuditLog",
    "Checkpoint",
    "CheckpointKeeper",
    "GenesisRecord",
    "NoteSigner",
    "NoteVerifier",
    "RoundRecord",
    "RunStore",
    "VerifyReport",
    "cosign_checkpoint",
    "prove",
    "show",
    "verify_proof",
    "verify_run_dir",
]
