"""A bank's round-0 survivor record (protocols/secagg/spec.md section 12.1, "Round 0 across
sessions"; red-team finding S6-5): the first set is kept, the same set is accepted again, any
other set is refused, across processes reading the same state dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.deploy.common import Round0Survivors, ServerFaultError

NAMES = [f"b{i}" for i in range(8)]


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(NAMES), min_size=2), st.sets(st.sampled_from(NAMES), min_size=2),
       st.integers(min_value=0, max_value=2**32))
def test_only_the_first_survivor_set_is_revealed_for(tmp_path_factory: pytest.TempPathFactory,
                                                     first: set[str], later: set[str],
                                                     tag: int) -> None:
    state = tmp_path_factory.mktemp("state")
    digest = f"{tag:064x}"
    Round0Survivors(state, digest).check_and_record(0, sorted(first, reverse=True))
    again = Round0Survivors(state, digest)  # a fresh object: a new ClientApp process
    if later == first:
        again.check_and_record(0, sorted(later))
    else:
        with pytest.raises(ServerFaultError, match="another survivor set"):
            again.check_and_record(0, sorted(later))
    # the record still holds the first set, and another manifest has its own record
    again.check_and_record(0, sorted(first))
    Round0Survivors(state, f"{tag + 1:064x}").check_and_record(0, sorted(later))


def test_an_unreadable_record_is_a_typed_error(tmp_path: Path) -> None:
    from securefl.errors import ConfigError

    r = Round0Survivors(tmp_path, "ab" * 32)
    r.path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="unreadable"):
        r.check_and_record(0, ["a", "b"])
    r.path.write_text('{"survivors": [1]}')
    with pytest.raises(ConfigError, match="unreadable"):
        r.check_and_record(0, ["a", "b"])
