"""A bank's round-0 survivor record (protocols/secagg/spec.md section 12.1, "Round 0 across
sessions"; red-team finding S6-5): the first set is kept, the same set is accepted again, any
other set is refused, across processes reading the same state dir."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_helpers import identity_keys, signed_federation
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.deploy.common import Round0Survivors, ServerFaultError
from securefl.federation import Federation, ProtocolParams

NAMES = [f"b{i}" for i in range(8)]
_KEYS = identity_keys(NAMES)
#: two manifests over the same eight banks (same identity keys), differing in a parameter only
V1: Federation = signed_federation(NAMES, _KEYS, ProtocolParams(aggregation="secagg", threshold=2))
V2: Federation = signed_federation(
    NAMES, _KEYS, ProtocolParams(aggregation="secagg", threshold=2, max_sessions=512))


@settings(max_examples=40, deadline=None)
@given(st.sets(st.sampled_from(NAMES), min_size=2), st.sets(st.sampled_from(NAMES), min_size=2),
       st.booleans())
def test_only_the_first_survivor_set_is_revealed_for(tmp_path_factory: pytest.TempPathFactory,
                                                     first: set[str], later: set[str],
                                                     noiseless: bool) -> None:
    state = tmp_path_factory.mktemp("state")
    Round0Survivors(state, V1, noiseless=noiseless).check_and_record(
        0, sorted(first, reverse=True))
    # a fresh object: a new ClientApp process
    again = Round0Survivors(state, V1, noiseless=noiseless)
    if later == first:
        again.check_and_record(0, sorted(later))
    else:
        with pytest.raises(ServerFaultError, match="round-0 release over another"):
            again.check_and_record(0, sorted(later))
    # the record still holds the first set
    again.check_and_record(0, sorted(first))
    # a new manifest over the same banks: a noised round 0 (a DP release, charged) may run over
    # another set; a noiseless one only over the first set, under any manifest (S7-1)
    other = Round0Survivors(state, V2, noiseless=noiseless)
    if noiseless and later != first:
        with pytest.raises(ServerFaultError, match="under any manifest"):
            other.check_and_record(0, sorted(later))
        Round0Survivors(state, V2).check_and_record(0, sorted(first))
    else:
        other.check_and_record(0, sorted(later))


def test_an_unreadable_record_is_a_typed_error(tmp_path: Path) -> None:
    from securefl.errors import ConfigError

    r = Round0Survivors(tmp_path, V1, noiseless=False)
    r.path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="unreadable"):
        r.check_and_record(0, ["b0", "b1"])
    r.path.write_text('{"survivors": [1]}')
    with pytest.raises(ConfigError, match="unreadable"):
        r.check_and_record(0, ["b0", "b1"])
    r = Round0Survivors(tmp_path / "other", V1)
    r.noiseless_path.parent.mkdir()
    r.noiseless_path.write_text('{"identity_keys": "ab"}')
    with pytest.raises(ConfigError, match="unreadable"):
        r.check_and_record(0, ["b0", "b1"])
