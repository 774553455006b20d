"""Resource limits (issue 17, item 3): a peer or file that declares or sends more than a limit is
refused before allocation.

Every case (tests/fuzz/limits_worker.py) would allocate gigabytes if its declared size were
believed: 2^32 - 1 roster entries, shares, chunks or contributions, 4 GiB of masked input, CKKS
values or envelope payload, MAX_CLIENTS + 1 shares or commitments, a 2^40-coordinate vector,
an 8 GiB manifest, identity, config, ledger or audit log (sparse files), a safetensors header of
2^40 bytes or a 64 GiB tensor. The child runs under RLIMIT_AS = 512 MiB, so believing any of them
ends in MemoryError there; the control case shows the limit bites (a 1 GiB bytearray fails).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "fuzz" / "limits_worker.py"
LIMIT = 512 << 20

#: the limit each case runs into, and the typed error that says so
EXPECTED = {
    "secagg.roster_declares_4g_entries": "MessageError",
    "secagg.share_keys_declares_4g_shares": "MessageError",
    "secagg.unmask_with_max_clients_plus_one_shares": "MessageError",
    "secagg.masked_input_declares_4g_bytes": "MessageError",
    "secagg.masked_input_dim_2_40": "MessageError",
    "secagg.message_over_byte_limit": "MessageError",
    "ckks.verify_request_declares_4g_contributions": "MessageError",
    "ckks.contribution_declares_4g_chunks": "MessageError",
    "ckks.decrypt_result_declares_4g_values": "MessageError",
    "ckks.commitment_set_over_max_clients": "MessageError",
    "envelope.payload_declares_4g_bytes": "MessageError",
    "manifest.8gb_file": "MessageError",
    "manifest.over_max_members": "MessageError",
    "identity.8gb_file": "ConfigError",
    "config.8gb_file": "ConfigError",  # was MemoryError: the whole file was read first
    "ledger.8gb_file": "LedgerError",
    "ledger.missing_file": "LedgerError",  # was FileNotFoundError
    "audit.8gb_log": "AuditError",  # was MemoryError: `audit verify` read the whole log
    "safetensors.header_declares_2_40": "IntegrityError",
    "safetensors.tensor_declares_64gb": "IntegrityError",
}


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    scratch = tmp_path_factory.mktemp("limits")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(scratch)], capture_output=True,
                          text=True, preexec_fn=_limit, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_the_memory_limit_bites(outcomes: dict[str, str]) -> None:
    assert outcomes["control.allocate_1gb"] == "untyped:MemoryError"


def test_every_case_is_run(outcomes: dict[str, str]) -> None:
    assert set(outcomes) == {*EXPECTED, "control.allocate_1gb"}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_refused_before_allocation(outcomes: dict[str, str], case: str) -> None:
    assert outcomes[case] == f"typed:{EXPECTED[case]}"
