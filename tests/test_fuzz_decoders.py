"""Hypothesis fuzzing of every decoder of bytes from another party or from an auditor's file
(issue 17, item 1): only securefl's typed errors (SecureFLError subclasses) may come out.

Targets and seeds: tests/fuzz/targets.py; mutations: tests/fuzz/mutate.py. CKKS ciphertext and
context parsing (TenSEAL/SEAL, C++) is fuzzed in a subprocess in tests/test_fuzz_ckks.py. The
number of examples per target is the CI budget; set SECUREFL_FUZZ_EXAMPLES to run longer.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import pytest
from fuzz import mutate
from fuzz.targets import Target, all_targets, message_targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.config import FIELD_TYPES, from_mapping
from securefl.errors import SecureFLError

EXAMPLES = int(os.environ.get("SECUREFL_FUZZ_EXAMPLES", "100"))
SLOW_TARGETS = {"audit.run_dir": 30}  # copies and verifies a run directory per example
TARGETS = all_targets()
FUZZ = settings(deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def typed_or_accepted(target: Target, data: bytes) -> None:
    """The fuzz oracle: the decoder accepts the input or raises a SecureFLError."""
    with contextlib.suppress(SecureFLError):
        target.decode(data)


def test_every_seed_is_accepted() -> None:
    """Mutations start from inputs the decoder accepts, so they reach the checks behind parsing."""
    assert len(TARGETS) >= 18
    for t in TARGETS:
        assert t.seeds, t.name
        for seed in t.seeds:
            t.decode(seed)


def test_the_oracle_fails_on_an_untyped_exception() -> None:
    def bad(data: bytes) -> None:
        raise ValueError("untyped")

    with pytest.raises(ValueError, match="untyped"):
        typed_or_accepted(Target("bad", bad, (b"",)), b"x")


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_decoder_raises_only_typed_errors(target: Target) -> None:
    n = SLOW_TARGETS.get(target.name, EXAMPLES) if "SECUREFL_FUZZ_EXAMPLES" not in os.environ \
        else EXAMPLES

    @settings(FUZZ, max_examples=n)
    @given(data=mutate.hostile_inputs(target.seeds, target.fmt))
    def run(data: bytes) -> None:
        typed_or_accepted(target, data)

    run()


def test_committed_corpus_raises_only_typed_errors() -> None:
    """Replay tests/fuzz/corpus (atheris' merged corpus, and any crash it ever found) the way
    tests/fuzz/fuzz_messages.py feeds it: the first byte picks the decoder."""
    files = sorted((Path(__file__).parent / "fuzz" / "corpus").iterdir())
    assert len(files) >= 50
    targets = message_targets()
    for f in files:
        data = f.read_bytes()
        if data:
            typed_or_accepted(targets[data[0] % len(targets)], data[1:])


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_decoder_refuses_deep_nesting_and_huge_lengths(target: Target) -> None:
    """Deterministic hostile inputs every run: deep nesting, 2^32-1 declared lengths, empty."""
    inputs = [b"", mutate.deep_msgpack(), mutate.deep_json(), mutate.deep_msgpack(100_000),
              mutate.deep_json(100_000)]
    inputs += [h + bytes(16) for h in mutate.HUGE_HEADERS]
    inputs += [s[:1] + h + s[1:] for s in target.seeds[:1] for h in mutate.HUGE_HEADERS]
    for data in inputs:
        typed_or_accepted(target, data)


@settings(FUZZ, max_examples=EXAMPLES)
@given(st.dictionaries(st.sampled_from(sorted(FIELD_TYPES)), mutate.hostile_values(), max_size=6))
def test_config_mapping_with_wrong_types_and_nonfinite_floats(values: dict[str, Any]) -> None:
    """from_mapping (what --config and the API feed) refuses wrong types, NaN and Inf typed."""
    try:
        cfg = from_mapping(values, source="fuzz")
    except SecureFLError:
        return
    for k in values:
        v = getattr(cfg, k)
        assert not (isinstance(v, float) and not math.isfinite(v)), k


@settings(FUZZ, max_examples=EXAMPLES)
@given(doc=mutate.toml_documents(sorted(FIELD_TYPES)))
def test_config_toml_documents(doc: bytes) -> None:
    target = next(t for t in TARGETS if t.name == "config.toml")
    typed_or_accepted(target, doc)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_config_refuses_nonfinite_floats(value: float) -> None:
    with pytest.raises(SecureFLError, match=r"finite|positive|must"):
        from_mapping({"clip_norm": value})
