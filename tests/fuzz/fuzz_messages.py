#!/usr/bin/env python3
"""Coverage-guided fuzzing of securefl's message decoders with atheris (libFuzzer), issue 17.

atheris instruments securefl's Python code (not msgspec's C decoder, nor SEAL), so it steers
inputs into securefl's own validation behind the parsers. The first input byte picks the decoder
(tests/fuzz/targets.py::message_targets, the in-memory ones; every target with ``--all``), the
rest is its input; the corpus starts from each decoder's valid seeds. Only SecureFLError may come
out of a decoder: anything else is a crash, written to ``crash-*`` in the artifact directory; copy
it into tests/fuzz/corpus/ (the committed corpus the harness starts from), where
tests/test_fuzz_decoders.py::test_committed_corpus_raises_only_typed_errors replays every file.

    python tests/fuzz/fuzz_messages.py -max_total_time=30            # what .ci/run does
    python tests/fuzz/fuzz_messages.py -max_total_time=3600 -jobs=2   # longer, on 2 cores
    python tests/fuzz/fuzz_messages.py --all -max_total_time=600      # every decoder

Other arguments are libFuzzer's (-runs=N, -rss_limit_mb=N, -artifact_prefix=DIR/, a corpus dir).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["securefl"]):
    from fuzz.targets import Target, all_targets, message_targets

    from securefl.errors import SecureFLError

    TARGETS: list[Target] = all_targets() if "--all" in sys.argv else message_targets()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    with contextlib.suppress(SecureFLError):
        target.decode(data[1:])


CORPUS = Path(__file__).parent / "corpus"


def seed_corpus() -> list[str]:
    """A temporary corpus directory (where libFuzzer writes) holding every target's seeds,
    prefixed with its index, then the committed corpus (tests/fuzz/corpus, read only)."""
    corpus = Path(tempfile.mkdtemp(prefix="securefl-atheris-"))
    for i, target in enumerate(TARGETS):
        for j, seed in enumerate(target.seeds):
            (corpus / f"{i:02d}-{j:02d}").write_bytes(bytes([i]) + seed)
    return [str(corpus)] + ([str(CORPUS)] if "--all" not in sys.argv else [])


def main() -> None:
    args = [a for a in sys.argv if a != "--all"]
    if not any(not a.startswith("-") for a in args[1:]):
        args += seed_corpus()
    print("atheris targets:", ", ".join(t.name for t in TARGETS), "corpus:", args[1:], flush=True)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
