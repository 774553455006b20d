#!/usr/bin/env python3
"""How many inputs the rule-based machine fuzz (tests/test_fuzz_machines.py) feeds to each
machine's handlers, and how many each refused (typed): the counts in docs/security.md.

    PYTHONPATH=.:tests python tests/fuzz/machine_counts.py                 # CI settings
    SECUREFL_FUZZ_EXAMPLES=400 PYTHONPATH=.:tests python tests/fuzz/machine_counts.py
"""

from __future__ import annotations

import collections
import time
from typing import Any

from hypothesis.stateful import run_state_machine_as_test

import tests.test_fuzz_machines as T
from securefl.errors import SecureFLError

COUNTS: collections.Counter[str] = collections.Counter()


def main() -> None:
    ckks_receive = T._ckks_receive

    def counted_ckks(server: Any, msg: Any) -> Any:
        try:
            out = ckks_receive(server, msg)
        except SecureFLError:
            COUNTS["CKKSServerMachine refused"] += 1
            raise
        COUNTS["CKKSServerMachine accepted"] += 1
        return out

    T._ckks_receive = counted_ckks
    for cls in (T.SecAggServerMachine, T.SecAggClientMachine):
        feed = cls.feed

        def counted(self: Any, item: Any, *, genuine: bool, _feed: Any = feed,
                    _name: str = cls.__name__) -> Any:
            out = _feed(self, item, genuine=genuine)
            COUNTS[f"{_name} {'refused' if out is None else 'accepted'}"] += 1
            return out

        cls.feed = counted  # type: ignore[method-assign]
    for cls, case in ((T.SecAggServerMachine, T.TestSecAggServerMachine),
                      (T.SecAggClientMachine, T.TestSecAggClientMachine),
                      (T.CKKSServerMachine, T.TestCKKSServerMachine)):
        t0 = time.perf_counter()
        run_state_machine_as_test(cls, settings=case.settings)
        print(f"{cls.__name__}: {case.settings.max_examples} runs, "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    for key, n in sorted(COUNTS.items()):
        print(key, n)


if __name__ == "__main__":
    main()
