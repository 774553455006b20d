"""SecAgg / SecAgg+ as sans-IO state machines (no I/O, no clock, no global RNG).

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
figure 4 (the actively secure variant with the consistency-check round) and Bell et al., "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020 (masking and sharing only among
the neighbours on a random graph G(n, p) drawn from public randomness; k = n - 1 is classic
SecAgg). Thresholds and degree follow from the manifest's assumptions (bounds.py)..

Stages (client view):  advertise keys -> share keys -> masked input -> consistency check -> unmask.
Both machines are driven by ONE transition table each: ``(state, input type) -> (handler, next
state)``; any pair not in the table raises :class:`StateError` for a local event and
:class:`RemoteProtocolError` for a peer's message. The server advances a stage on a local
:class:`Deadline` event, which the transport (not the protocol) raises when its clock says so.

Clients are identified to the server by the transport (TLS / node authentication); the messages a
malicious server could forge or replay are signed (keys, survivor set) or AEAD-sealed (shares).

Layout:

- :mod:`securefl.protocol.secagg.bounds`     thresholds and graph degree from the stated assumptions
- :mod:`securefl.protocol.secagg.encoding`   quantisation, noise-share size, field input, decoding
- :mod:`securefl.protocol.secagg.config`     domain strings, sizes, stage names, IdentityRoster, SecAggConfig
- :mod:`securefl.protocol.secagg.canonical`  the canonical byte strings that are signed, hashed, sealed
- :mod:`securefl.protocol.secagg.machine`    local events, Outgoing, Transition and the dispatcher
- :mod:`securefl.protocol.secagg.client`     SecAggClient and CLIENT_TRANSITIONS
- :mod:`securefl.protocol.secagg.server`     SecAggServer, SERVER_TRANSITIONS and ServerResult
"""

from __future__ import annotations

from securefl.protocol.secagg.bounds import Assumptions, Derived, derive
from securefl.protocol.secagg.canonical import (
    advertise_message,
    consistency_message,
    plan_digest,
    roster_digest,
    self_mask_commitment,
    share_plaintext,
)
from securefl.protocol.secagg.canonical import pair_sign as pair_sign
from securefl.protocol.secagg.client import (
    CLIENT_TRANSITIONS,
    ClientState,
    DoubleRevealError,
    SecAggClient,
    ViewMismatchError,
)
from securefl.protocol.secagg.config import (
    ADVERTISE_DOMAIN,
    CONSISTENCY_DOMAIN,
    IdentityRoster,
    SecAggConfig,
)
from securefl.protocol.secagg.config import COMMIT_DOMAIN as COMMIT_DOMAIN
from securefl.protocol.secagg.config import MASK_PURPOSE as MASK_PURPOSE
from securefl.protocol.secagg.config import ROSTER_DOMAIN as ROSTER_DOMAIN
from securefl.protocol.secagg.config import SEED_SIZE as SEED_SIZE
from securefl.protocol.secagg.config import SHARE_PURPOSE as SHARE_PURPOSE
from securefl.protocol.secagg.config import STAGES as STAGES
from securefl.protocol.secagg.encoding import (
    SecAggEncoder,
    check_release,
    decode_sum,
    encode_input,
    moments_precision_bits,
)
from securefl.protocol.secagg.machine import Deadline, Outgoing, Start
from securefl.protocol.secagg.machine import Handler as Handler
from securefl.protocol.secagg.machine import S as S
from securefl.protocol.secagg.machine import Transition as Transition
from securefl.protocol.secagg.server import SERVER_TRANSITIONS, SecAggServer, ServerState
from securefl.protocol.secagg.server import ServerResult as ServerResult

__all__ = [
    "ADVERTISE_DOMAIN",
    "CLIENT_TRANSITIONS",
    "CONSISTENCY_DOMAIN",
    "SERVER_TRANSITIONS",
    "Assumptions",
    "ClientState",
    "Deadline",
    "Derived",
    "DoubleRevealError",
    "IdentityRoster",
    "Outgoing",
    "SecAggClient",
    "SecAggConfig",
    "SecAggEncoder",
    "SecAggServer",
    "ServerState",
    "Start",
    "ViewMismatchError",
    "advertise_message",
    "check_release",
    "consistency_message",
    "decode_sum",
    "derive",
    "encode_input",
    "moments_precision_bits",
    "plan_digest",
    "roster_digest",
    "self_mask_commitment",
    "share_plaintext",
]
