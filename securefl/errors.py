"""One exception hierarchy for securefl.

Every error carries a stable ``code`` (for scripts and the CLI's exit status), a one-line ``hint``
(what to do next) and, for protocol errors, whose fault it was. Messages never contain secrets:
callers pass identifiers, sizes and digests, never key material or raw updates.

The CLI maps classes to exit codes in one place (:data:`EXIT_CODES`), in the spirit of pip's
``base_command.py``: a typed error is a clean exit with a message, a traceback only with ``--debug``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "EXIT_CODES",
    "AggregationAbortedError",
    "AuditError",
    "AuditFormatError",
    "BudgetExceededError",
    "ByteLimitError",
    "ConfigError",
    "CryptoError",
    "DataError",
    "DeadlineError",
    "Fault",
    "IntegrityError",
    "LedgerError",
    "LocalProtocolError",
    "MessageError",
    "OverflowRiskError",
    "PlanMismatchError",
    "PrivacyError",
    "ProtocolError",
    "RemoteProtocolError",
    "SchemaPinError",
    "SchemaViolationError",
    "SecureFLError",
    "SignatureError",
    "StateError",
    "exit_code_for",
]


class Fault(StrEnum):
    """Whose fault a protocol error is (h11's Local/RemoteProtocolError distinction)."""

    LOCAL = "local"  # this party misused the API or its own state is inconsistent
    REMOTE = "remote"  # a peer (client, server, key holder) sent something invalid or malicious


class SecureFLError(Exception):
    """Base of every error securefl raises on purpose."""

    code: ClassVar[str] = "SFL000"
    default_hint: ClassVar[str] = "see the message above"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "type": type(self).__name__, "message": self.message,
                "hint": self.hint}


# --- configuration and input -------------------------------------------------------------------
class ConfigError(SecureFLError):
    """The run configuration (TOML file, CLI flags or API arguments) is invalid."""

    code = "SFL100"
    default_hint = "fix the named option; `securefl run --help` lists every option and its range"


class DataError(SecureFLError):
    """A dataset cannot be loaded, validated or partitioned as asked."""

    code = "SFL200"
    default_hint = "check the data file, the --label column and the number of banks"


class SchemaViolationError(DataError):
    """A bank's table does not fit the data schema. ``columns`` maps each offending column to what
    is wrong with it (up to 5 quoted values each); the message names them too."""

    code = "SFL201"
    default_hint = ("run `securefl data check FILE --schema SCHEMA` for the full report; fix the "
                    "table, or agree a new schema with the federation")

    def __init__(self, message: str, *, columns: dict[str, list[str]],
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.columns = columns


class SchemaPinError(DataError):
    """The data schema's digest is not the one the federation manifest pins."""

    code = "SFL202"
    default_hint = "use the schema file the federation agreed on (its digest is in the manifest)"


# --- protocol ------------------------------------------------------------------------------------
class ProtocolError(SecureFLError):
    """A protocol state machine received something it must not accept."""

    code = "SFL300"
    fault: ClassVar[Fault] = Fault.REMOTE
    default_hint = "the round was aborted; no partial result was released"


class LocalProtocolError(ProtocolError):
    """This party called the protocol API in the wrong state or with invalid arguments."""

    code = "SFL301"
    fault = Fault.LOCAL
    default_hint = "a bug in the caller: the protocol object was driven out of order"


class RemoteProtocolError(ProtocolError):
    """A peer sent a message that is invalid, out of order, replayed or malicious."""

    code = "SFL302"
    fault = Fault.REMOTE
    default_hint = "a peer misbehaved or the network corrupted a message; the round was aborted"


class MessageError(RemoteProtocolError):
    """A wire message is oversized, malformed, of an unknown type or version."""

    code = "SFL303"
    default_hint = "the message was rejected before use; check peer versions"


class ByteLimitError(MessageError):
    """A peer sent more bytes in one round than the round's plan allows it (a per-round, per-peer
    cap derived from the dimension and the mode); the excess is refused before it is decoded."""

    code = "SFL308"
    default_hint = "the peer was refused for this round (a dropout); check its version and plan"


class PlanMismatchError(RemoteProtocolError):
    """A round's CKKS key (its signed public context) is bound to another signed training plan
    (Hello) than the one this party verified: the server showed the parties different plans
    (red-team finding S7b-6). Nothing of the round leaves the party."""

    code = "SFL309"
    default_hint = ("the aggregation server showed the parties different signed plans; stop and "
                    "investigate it")


class StateError(LocalProtocolError):
    """A message or call is not allowed in the current protocol state."""

    code = "SFL304"


class AggregationAbortedError(ProtocolError):
    """Too few parties survived a stage; the round aborts and nothing is released."""

    code = "SFL310"
    fault = Fault.REMOTE
    default_hint = "lower the threshold only if the privacy trade-off allows it, or retry the round"


class DeadlineError(AggregationAbortedError):
    """A stage's deadline passed: the server did not answer a bank in time (the bank gave up), or
    too few banks answered in time; the round aborts and nothing is released."""

    code = "SFL311"
    default_hint = "a party was too slow or unreachable; retry the round or raise the deadline"


# --- cryptography and integrity ------------------------------------------------------------------
class CryptoError(SecureFLError):
    """A cryptographic operation failed (bad key, failed decryption, invalid parameters)."""

    code = "SFL400"
    default_hint = "keys or ciphertexts do not match this session and round"


class SignatureError(CryptoError):
    """A signature did not verify, or the signer is not in the federation manifest."""

    code = "SFL401"
    default_hint = "the message was not signed by the enrolled key it claims; it was rejected"


class IntegrityError(CryptoError):
    """A digest, checksum or authenticated ciphertext did not match."""

    code = "SFL402"
    default_hint = "the data was altered or corrupted; do not use it"


class OverflowRiskError(CryptoError):
    """Encoding the inputs could wrap around the modulus (silent corruption), so it was refused."""

    code = "SFL403"
    default_hint = "lower the clip norm or the scale, or use larger parameters"


# --- privacy ---------------------------------------------------------------------------------------
class PrivacyError(SecureFLError):
    """A differential-privacy parameter or computation is invalid."""

    code = "SFL500"
    default_hint = "check noise multiplier, sampling rate, delta and clip norm"


class BudgetExceededError(PrivacyError):
    """The planned or spent privacy loss exceeds the target epsilon."""

    code = "SFL501"
    default_hint = "reduce rounds, raise the noise multiplier, or raise --target-epsilon"


class LedgerError(PrivacyError):
    """The privacy ledger is malformed, tampered with, or has a gap or duplicate."""

    code = "SFL502"
    default_hint = "the ledger cannot be trusted; run `securefl audit verify` on the run directory"


# --- audit -------------------------------------------------------------------------------------------
class AuditError(SecureFLError):
    """The audit log, a checkpoint or a proof failed verification."""

    code = "SFL600"
    default_hint = "the run directory was altered; the named record is the first bad one"


class AuditFormatError(AuditError):
    """A run directory written in a format version this securefl does not verify."""

    code = "SFL601"
    default_hint = "verify it with the securefl version that wrote it, or re-run"


#: exit status per error class, most specific first (the CLI walks the MRO).
EXIT_CODES: dict[type[SecureFLError], int] = {
    ConfigError: 2,
    DataError: 3,
    ProtocolError: 4,
    CryptoError: 5,
    PrivacyError: 6,
    BudgetExceededError: 7,
    AuditError: 8,
    SecureFLError: 1,
}


def exit_code_for(err: SecureFLError) -> int:
    for cls in type(err).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
