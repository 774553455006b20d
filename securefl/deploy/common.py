"""Pieces both deployment sides share: the federation manifest as the PKI, bank ids, the per-round
:class:`RoundSpec` and the SecAgg encoding, and the simulation's randomness derivation.
The encoding and the simulation's randomness are the ones the in-process driver uses
(:func:`securefl.protocol.secagg.encode_input`, :class:`securefl.crypto.random.SimulationRandomness`), so a
deployment and ``securefl run`` with the same seed compute the same model.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from securefl.crypto.random import SeededRandomSource, SimulationRandomness, SystemRandomSource
from securefl.crypto.secret import Secret
from securefl.errors import ConfigError, RemoteProtocolError, SecureFLError, SignatureError
from securefl.federation import Federation, ProtocolParams
from securefl.protocol.plan import RoundPlanner, RoundSpec
from securefl.protocol.quantize import Encoding
from securefl.protocol.secagg import IdentityRoster, SecAggConfig

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.crypto.aead import AeadContext
    from securefl.crypto.random import RandomSource
    from securefl.crypto.signing import SigningKey, VerifyKey
    from securefl.deploy.messages import RoundStart, ServerPayload
    from securefl.transport.flower import Envelope

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_COUNTER_STEP",
    "SESSION_DOMAIN",
    "NodeHandler",
    "Round0Survivors",
    "ServerFaultError",
    "SessionCounter",
    "bank_ids",
    "check_pending",
    "check_plan_threshold",
    "draw_size",
    "encode_input",
    "encoding_for",
    "fedavg_weights",
    "identity_roster",
    "locked_json_update",
    "next_attempt",
    "plan_threshold",
    "planner_for",
    "public_draw",
    "randomness",
    "round0_fills",
    "round0_input",
    "round_participants",
    "round_spec",
    "secagg_config",
    "session_id",
    "split_standardisation",
]


class ServerFaultError(RemoteProtocolError):
    """The server's signed plan breaks a rule every bank checks for itself (protocols/secagg/
    spec.md section 12): a session id not derived from the manifest and a fresh counter, a
    counter already used or above the manifest's max_sessions, an attempt beyond the bound,
    participants not drawn from the public randomness, FedAvg weights that are not the signed
    bank sizes'."""

    code = "SFL307"
    default_hint = "the aggregation server deviated from the protocol; stop and investigate it"


#: domain of the deployment's session id (section 12 of protocols/secagg/spec.md)
SESSION_DOMAIN = b"securefl/deploy/session/v2"
#: domain of the participant draw
PARTICIPANTS_DOMAIN = b"securefl/deploy/participants/v1"
#: attempts at one input: rounds in a row a bank trains from the same global model in one
#: session (the first and at most two retries after aborted rounds; an aborted round leaves the
#: model unchanged, so the next round retries it). Each attempt is a new round, hence a new
#: participant draw and graph, so the graph guarantee for one model's updates fails with
#: probability <= MAX_ATTEMPTS * 2^-security_bits per session (spec section 12)
MAX_ATTEMPTS = 3


def _u64(x: int) -> bytes:
    return int(x).to_bytes(8, "big")


def session_id(manifest_digest: str, counter: int) -> bytes:
    """The session id every bank recomputes: SHA-256(u16 len(domain) || domain || manifest
    digest (32 bytes) || u64 counter), first 16 bytes. No party chooses it beyond the counter,
    which each bank accepts at most once (:class:`SessionCounter`)."""
    if counter < 1:
        raise ConfigError(f"session counter {counter} must be >= 1")
    body = (len(SESSION_DOMAIN).to_bytes(2, "big") + SESSION_DOMAIN
            + bytes.fromhex(manifest_digest) + _u64(counter))
    return hashlib.sha256(body).digest()[:16]


def round_participants(session: bytes, round_: int, members: Sequence[str], k: int
                       ) -> list[str]:
    """The participants of (session, round), from public randomness only: the manifest's clients
    ``members`` ordered by SHA-256(u16 len(domain) || domain || session || u64 round || UTF-8
    name), the first ``k`` of them, returned in manifest order. Nothing the server says during
    the session enters it: a bank the server declares silent, or whose signed BankInfo it does
    not forward, stays drawn and is a SecAgg dropout (spec section 12.1). Every bank recomputes
    it. A retry of an aborted round is the next round, so each attempt draws anew."""
    def rank(name: str) -> bytes:
        return hashlib.sha256(len(PARTICIPANTS_DOMAIN).to_bytes(2, "big") + PARTICIPANTS_DOMAIN
                              + session + _u64(round_) + name.encode("utf-8")).digest()

    out = set(sorted(members, key=rank)[:k])
    return [b for b in members if b in out]


def draw_size(members: int, fraction: float, floor: int) -> int:
    """How many of the manifest's ``members`` clients a round draws: all of them, or with client
    sampling (``fraction`` < 1) max(floor, round(fraction * members)) of them."""
    if fraction >= 1:
        return members
    return min(members, max(floor, round(fraction * members)))


def public_draw(fed: Federation, session: bytes, round_: int, fraction: float) -> list[str]:
    """The participants of (session, round) every party recomputes from the manifest:
    :func:`draw_size` of the manifest's clients (``fraction`` is the signed plan's
    clients_per_round for a training round, 1 for round 0; never fewer than max(2, the
    manifest's threshold)) in :func:`round_participants`'s order."""
    k = draw_size(len(fed.clients), fraction, max(2, fed.params.threshold))
    return round_participants(session, round_, fed.clients, k)


def fedavg_weights(sizes: Mapping[str, int]) -> dict[str, float]:
    """The public FedAvg weight n_i / max n of every bank (the server computes and every bank
    re-checks them from the signed bank sizes)."""
    top = max(sizes.values())
    return {b: n / top for b, n in sizes.items()}


def locked_json_update(path: Path, step: Any) -> dict[str, Any]:
    """Read the JSON record at ``path`` (None when absent), pass it to ``step`` and replace the
    file with what ``step`` returns, atomically (temporary file, fsync, rename) under an exclusive
    ``flock`` of ``<path>.lock``: the discipline of every bank-side record of a manifest (its
    session counter, its round-0 survivor set). ``step`` raises to refuse; the file is then
    unchanged."""
    import json

    from securefl.storage import atomic_write_json, exclusive_lock

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with exclusive_lock(path.with_suffix(".lock")):
        record: dict[str, Any] | None = None
        if path.exists():
            try:
                record = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"unreadable record {path}: {exc}") from exc
            if not isinstance(record, dict):
                raise ConfigError(f"unreadable record {path}: not a JSON object")
        new: dict[str, Any] = step(record)
        atomic_write_json(path, new, mode=0o600)
        return new


class Round0Survivors:
    """The set of banks of the first round-0 release a party took part in, kept in its state dir
    (same discipline as :class:`SessionCounter`). Round 0 sums the banks' moment vectors; two
    releases over different sets difference to one bank's own moments (red-team findings S6-5,
    S6b-1, S7-1). Whoever releases refuses a later round 0 over another set (spec section 12.1,
    "Round 0 across sessions"): a SecAgg bank reveals shares only for the signed survivor set it
    recorded; a CKKS bank reveals its ciphertext only under the closed commitment set it
    recorded, and the CKKS key holder decrypts only a round-0 sum over the contributors it
    recorded (it alone releases, and it sees every session, so a bank cut off from a session
    is still covered). A round 0 over the same set again is allowed: it releases the same sum
    for unchanged data (docs/data.md section 5).

    Two records: ``round0-<manifest digest>.json`` (bank names, per manifest) and, for a
    *noiseless* round 0 (``noiseless``: a plan without DP; every bank and the key holder refuse
    a round-0 multiplier other than 0 without DP and below MIN_NOISED_Z with it,
    securefl.protocol.round0.check_round0_noise, S7b-1), ``round0-noiseless.json`` with the
    banks' identity keys, kept across manifests:
    members who sign a new manifest (a bank left, a parameter changed) cannot difference two
    exact releases either (S7-1). A noised round 0 is a DP release charged to every bank's
    ledger and caps, so a new manifest may run it over another set."""

    def __init__(self, state_dir: Path, fed: Federation, who: str = "this bank", *,
                 noiseless: bool = True) -> None:
        self.path = state_dir / f"round0-{fed.digest}.json"
        self.noiseless_path = state_dir / "round0-noiseless.json"
        self.fed = fed
        self.noiseless = noiseless
        #: the party in the refusal message ("this bank", "this key holder")
        self.who = who

    def check_and_record(self, round_: int, survivors: Sequence[str]) -> None:
        """Record ``survivors`` if this party never took part in a round-0 release (of this
        manifest; of any manifest if noiseless); ServerFaultError if it did, over another
        set. A refusal by the second record after the first was created leaves a record of a
        release that did not happen: it only narrows what this party accepts later."""
        from securefl.storage import exclusive_lock

        want = sorted(survivors)
        keys = sorted(bytes(self.fed.verify_key(b).raw).hex() for b in survivors)

        def per_manifest(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is None:
                return {"manifest_sha256": self.fed.digest, "survivors": want}
            got = _str_list(record, "survivors", self.path)
            if got != want:
                gone = sorted(set(got) - set(want))
                new = sorted(set(want) - set(got))
                raise ServerFaultError(
                    f"round {round_}: a round-0 release over another survivor set than the one "
                    f"{self.who} took part in before under this manifest (missing {gone[:8]}, "
                    f"added {new[:8]}): two moment sums over different sets difference to a "
                    "bank's own moments, so round 0 re-runs only over the same set (spec "
                    "section 12.1)")
            return record

        def across_manifests(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is None:
                return {"identity_keys": keys}
            got = _str_list(record, "identity_keys", self.noiseless_path)
            if got != keys:
                raise ServerFaultError(
                    f"round {round_}: a noiseless round-0 release over another set of banks "
                    f"({len(keys)} identity keys, {len(set(keys) - set(got))} not in it) than "
                    f"the one {self.who} took part in before, under any manifest: two exact "
                    "moment sums over different sets difference to a bank's own moments (spec "
                    "section 12.1, S7-1). Run with DP (a noised round 0), or reuse the earlier "
                    "standardisation")
            return record

        with exclusive_lock(self.noiseless_path.with_name("round0.lock")):
            if self.noiseless:
                locked_json_update(self.noiseless_path, across_manifests)
            locked_json_update(self.path, per_manifest)


def _str_list(record: dict[str, Any], key: str, path: Path) -> list[str]:
    got = record.get(key)
    if not isinstance(got, list) or not all(isinstance(b, str) for b in got):
        raise ConfigError(f"unreadable round-0 record {path}")
    return sorted(got)


def next_attempt(round_: int, digest: bytes, last: bytes, attempts: int) -> int:
    """The attempt count at one global model after a round naming ``digest`` (``last`` and
    ``attempts`` before it); ServerFaultError beyond MAX_ATTEMPTS (spec section 12.1)."""
    n = attempts + 1 if digest == last else 1
    if n > MAX_ATTEMPTS:
        raise ServerFaultError(f"round {round_}: attempt {n} at the same global model, beyond "
                               f"the bound of {MAX_ATTEMPTS} (spec section 12.1)")
    return n


def check_pending(round_: int, pending: Sequence[int]) -> None:
    """Refuse a round when MAX_ATTEMPTS earlier rounds since this bank's last unmask are
    ``pending`` (took its keys or masked input, never unmasked): a model moved by one ULP per
    retry would otherwise reset :func:`next_attempt` (red-team findings M3, S6-4)."""
    if len(pending) >= MAX_ATTEMPTS:
        raise ServerFaultError(f"round {round_}: rounds {list(pending)[:5]} took this bank's "
                               f"input and never unmasked; at most {MAX_ATTEMPTS} in a row "
                               "(spec section 12.1)")


#: how far above the highest counter a bank accepted the next session's counter may be: room for
#: sessions that crashed before this bank saw them, and the most session ids a server can choose
#: among for one session (spec section 12.1)
MAX_COUNTER_STEP = 4


class SessionCounter:
    """The highest session counter a party has used (server) or accepted (bank) for one
    manifest, in ``<state dir>/session-<manifest digest>.json``: read and replaced atomically
    under an exclusive lock, so no counter is accepted twice, even by concurrent processes."""

    def __init__(self, state_dir: Path, manifest_digest: str, max_sessions: int) -> None:
        self.path = state_dir / f"session-{manifest_digest}.json"
        self.digest = manifest_digest
        #: the signed manifest's cap on its sessions (ProtocolParams.max_sessions)
        self.max_sessions = max_sessions

    def _update(self, check: Any) -> int:
        def step(record: dict[str, Any] | None) -> dict[str, Any]:
            try:
                highest = 0 if record is None else int(record["highest"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"unreadable session counter {self.path}: {exc}") from exc
            return {"manifest_sha256": self.digest, "highest": check(highest)}

        new: int = locked_json_update(self.path, step)["highest"]
        return new

    def next(self) -> int:
        """The server: one more than the highest counter it used (persisted before use);
        ConfigError once the manifest's sessions are used up (the banks would refuse it)."""
        def check(highest: int) -> int:
            if highest + 1 > self.max_sessions:
                raise ConfigError(
                    f"session {highest + 1} would exceed the manifest's max_sessions = "
                    f"{self.max_sessions}: its sessions are used up",
                    hint="the members sign a new manifest (`securefl federation create`)")
            return highest + 1

        return self._update(check)

    def accept(self, counter: int) -> None:
        """A bank: accept ``counter`` only if above every counter it accepted before, and at most
        :data:`MAX_COUNTER_STEP` above it: a server free to pick any larger counter could grind
        the session id (and with it every participant draw and graph seed) offline."""
        def check(highest: int) -> int:
            if counter > self.max_sessions:
                raise ServerFaultError(
                    f"session counter {counter} is above the manifest's max_sessions = "
                    f"{self.max_sessions}: the bound on the graphs a server can choose among "
                    "(every graph of max_sessions * (max_rounds + 1) within 2^-security_bits, spec "
                    "section 12.1) allows no more sessions under this manifest")
            if counter <= highest:
                raise ServerFaultError(
                    f"session counter {counter} is not above {highest}, the highest this bank "
                    "accepted: the server replays or restarts a session")
            if counter > highest + MAX_COUNTER_STEP:
                raise ServerFaultError(
                    f"session counter {counter} jumps more than {MAX_COUNTER_STEP} above "
                    f"{highest}, the highest this bank accepted: a server choosing among many "
                    "counters could grind the session id (spec section 12.1)")
            return counter

        self._update(check)


def bank_ids(fed: Federation) -> dict[str, int]:
    """Manifest client name -> SecAgg client id (its index in the manifest's client list)."""
    return {name: i for i, name in enumerate(fed.clients)}


def identity_roster(fed: Federation, session: bytes) -> IdentityRoster:
    """The SecAgg machines' PKI: client id -> the Ed25519 identity key listed in the manifest."""
    return IdentityRoster(session, {i: fed.verify_key(n) for n, i in bank_ids(fed).items()})


def round_spec(start: RoundStart, ids: dict[str, int], context: bytes = bytes(32),
               params: ProtocolParams | None = None) -> RoundSpec:
    """The round's public plan as both sides bind it into SecAgg's plan digest: participants,
    clip, threshold, noise, every participant's FedAvg weight (0 for a drawn bank without a
    signed size, which contributes nothing) and ``context``, the SHA-256 of the signed Hello (the training
    plan). With the manifest's ``params`` the client-level noise plan is sized for its colluders
    (each share (z C)^2 / h, h = T - c, or SecAgg+'s minimum isolatable honest set:
    NoisePlan.honest_floor), as ``securefl run`` sizes it, so the honest shares of any completed
    round carry z C even after the colluders subtract their own."""
    unknown = [p for p in start.participants if p not in ids]
    if unknown:
        raise SignatureError(f"round {start.round} names participants outside the manifest: "
                             f"{unknown[:5]}")
    if start.task == "train" and not set(start.weights) <= set(start.participants):
        raise ConfigError(f"round {start.round}: the plan gives FedAvg weights to banks that are "
                          "not its participants (the weights are signed into every bank's SecAgg "
                          "plan)")
    order = sorted(start.participants, key=lambda p: ids[p])
    # a drawn bank without a signed size (the server did not forward its BankInfo) has weight 0:
    # it contributes nothing (it refuses the round) and stays in the graph as a dropout
    weights = (tuple(start.weights.get(p, 0.0) for p in order) if start.task == "train"
               else None)
    # the weights and the training plan enter the SecAgg plan digest (a weight or plan tailored to
    # one bank is caught before unmasking); the global model is the consistency message's input
    # binding (it arrives after the keys)
    return planner_for(start, params).spec(
        start.round, tuple(ids[p] for p in order), weights=weights, context_digest=context,
        threshold=start.threshold, min_survivors=start.min_survivors)


def planner_for(start: RoundStart, params: ProtocolParams | None) -> RoundPlanner:
    """The round planner of a signed plan (securefl.protocol.plan.RoundPlanner): the manifest's
    ``params`` (assumptions, threshold rule) with the clip, noise multiplier and degree ``start``
    signs; without ``params`` no colluders and no SecAgg+ graph are assumed."""
    if params is None:
        return RoundPlanner(session_id=start.session, clip_norm=start.clip_norm,
                            noise_multiplier=start.noise_multiplier)
    return replace(params.planner(start.session, clip_norm=start.clip_norm,
                                  noise_multiplier=start.noise_multiplier), degree=start.degree)


def encoding_for(start: RoundStart, spec: RoundSpec) -> tuple[Encoding, int]:
    """The SecAgg encoding of this round and the protocol threshold (both sides compute them
    from the signed public plan; securefl.protocol.secagg.SecAggEncoder is the single definition)."""
    from securefl.protocol.secagg import SecAggEncoder

    agg = SecAggEncoder(degree=start.degree, precision_bits=start.precision_bits)
    return agg.encoding_for(spec, start.dim), agg.min_survivors(spec)


def plan_threshold(params: ProtocolParams, task: str, participants: Sequence[str],
                   sized: Collection[str]) -> int:
    """The one threshold T (and min_survivors) a round's plan may carry, from the manifest and
    the signed plan alone (spec section 12.1, red-team finding S6b-4): round 0 (``task``
    "moments", the complete graph) every drawn bank with a signed size in ``sized``
    (standardisation needs them all); a training round ``params.round_threshold(n)`` for its n
    participants. The server has no choice of T, hence none of the SecAgg+ degree and neighbour
    threshold that follow from it."""
    if task == "moments":
        return len([p for p in participants if p in sized])
    return params.round_threshold(len(participants))


def check_plan_threshold(params: ProtocolParams, start: RoundStart,
                         sized: Collection[str]) -> None:
    """ServerFaultError unless the signed threshold and min_survivors are both
    :func:`plan_threshold`'s: a server free to sign a larger T would choose among ~n SecAgg+
    graphs per (session, round) (distinct T give distinct k and t), which the lifetime union
    bound does not count; a larger min_survivors also shrinks every bank's noise share."""
    want = plan_threshold(params, start.task, start.participants, sized)
    if start.threshold != want or start.min_survivors != want:
        raise ServerFaultError(
            f"round {start.round}: threshold {start.threshold} and min_survivors "
            f"{start.min_survivors}; the manifest and the plan fix both at {want} (spec section "
            "12.1: one threshold, hence one SecAgg+ graph, per session and round)")


def secagg_config(start: RoundStart, spec: RoundSpec, enc: Encoding, threshold: int,
                  fed: Federation) -> SecAggConfig:
    """The round's SecAgg parameters, checked against the bounds that follow from the signed
    manifest's assumptions (a plan below them raises ConfigError before any key is made). A
    training round's protocol ``threshold`` must be the manifest's :meth:`ProtocolParams.
    round_threshold` for its n (ServerFaultError otherwise: the degree and t follow from it, so
    each (session, round) has one graph); round 0 is the complete graph, whatever T."""
    if start.task == "train":
        want = fed.params.round_threshold(len(spec.participants))
        if threshold != want:
            raise ServerFaultError(
                f"round {start.round}: protocol threshold {threshold} over "
                f"{len(spec.participants)} participants; the manifest fixes it at {want} (spec "
                "section 12.1: one SecAgg+ graph per session and round)")
    return SecAggConfig.build(session_id=start.session, round=start.round,
                              participants=spec.participants, threshold=threshold,
                              dim=start.dim, bits=enc.bits, degree=start.degree,
                              assumptions=fed.params.assumptions(),
                              plan_digest=spec.plan_digest())


def encode_input(x: NDArray[np.float64], spec: RoundSpec, enc: Encoding,
                 rounding: RandomSource, noise: RandomSource) -> NDArray[np.uint32]:
    """This bank's field input, encoded exactly as :func:`securefl.protocol.secagg.encode_input` does it
    for each client of the in-process aggregator (protocols/secagg)."""
    from securefl.protocol.secagg import encode_input as encode

    return encode(x, clip_norm=spec.clip_norm, encoding=enc, rounding=rounding, noise=noise,
                  who="this bank")


def round0_input(X: NDArray[np.floating], y: NDArray[np.floating] | None,
                 target_scale_log2: int | None) -> NDArray[np.float64]:
    """A bank's round-0 vector: the moments of its features (securefl.data.standardize.moments),
    and for regression of its target divided by 2^target_scale_log2 as one more column, so the
    target's moments stay within the features' range under one SecAgg bound."""
    from securefl.data.standardize import moments

    if target_scale_log2 is None or y is None:
        return moments(X)
    cols = np.column_stack([np.asarray(X, dtype=np.float64),
                            np.asarray(y, dtype=np.float64) / 2.0 ** target_scale_log2])
    return moments(cols)


def split_standardisation(total: NDArray[np.float64], target_scale_log2: int | None,
                          imputations: Sequence[Any] = ()) -> tuple[Any, Any]:
    """The released round-0 sum -> (feature Standardizer, target TargetScaler or None): the
    inverse of :func:`round0_input` (layout [n, sums, sums of squares]). With a data schema's
    ``imputations`` the feature Standardizer is that of the imputed rows (fill them with
    :func:`round0_fills`)."""
    from securefl.data.schema import impute_from_moments
    from securefl.data.standardize import Standardizer, TargetScaler

    features, target = _split_round0(total, target_scale_log2)
    if imputations:
        features, _ = impute_from_moments(features, imputations)
    return (Standardizer.from_summed_moments(features),
            None if target is None else TargetScaler.from_summed_moments(target))


def round0_fills(total: NDArray[np.float64], target_scale_log2: int | None,
                 imputations: Sequence[Any]) -> dict[int, float]:
    """The fill value of each imputed input, from the released round-0 sum (the federation's
    mean or mode; securefl.data.schema.impute_from_moments)."""
    from securefl.data.schema import impute_from_moments

    features, _ = _split_round0(total, target_scale_log2)
    return impute_from_moments(features, imputations)[1]


def _split_round0(total: NDArray[np.float64], target_scale_log2: int | None
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    total = np.asarray(total, dtype=np.float64)
    if target_scale_log2 is None:
        return total, None
    d = (total.size - 1) // 2 - 1  # features; the last column is the scaled target
    if total.size != 1 + 2 * (d + 1) or d < 1:
        raise ConfigError(f"a round-0 sum of length {total.size} carries no target column")
    s = 2.0 ** target_scale_log2
    features = np.concatenate([total[:1], total[1:1 + d], total[2 + d:2 + 2 * d]])
    target = np.array([total[0], total[1 + d] * s, total[2 + 2 * d] * s * s])
    return features, target


def randomness(sim_seed: int | None, session: bytes, round_: int, party: int, purpose: str,
               stored_seed: bytes | None = None, *, sim_stream: bytes | None = None
               ) -> RandomSource:
    """A bank's randomness for one purpose. Deployment: the OS CSPRNG, except for the SecAgg key
    machine, whose stream must be replayable across ClientApp processes and so comes from a
    32-byte seed drawn once per round from the OS CSPRNG and kept in the node's ``context.state``.
    ``sim_seed`` (INSECURE, tests only): the same streams as ``securefl run --seed``, keyed by
    ``sim_stream`` (the simulation's stream id the test server signs into the hello and plans;
    securefl.runtime.stream_id_for), not by the session id, which the manifest and the session
    counter fix; without it by the manifest-bound session id."""
    if sim_seed is not None:
        return SimulationRandomness(sim_seed, sim_stream or session).source(round_, party,
                                                                            purpose)
    if stored_seed is not None:
        return SeededRandomSource(Secret(stored_seed, label="round-seed"),
                                  f"{session.hex()}/{round_}/{party}/{purpose}")
    if purpose == "keys":
        raise ConfigError("the key machine needs a stored seed")
    return SystemRandomSource()


log = logging.getLogger("securefl.deploy")


#: bytes of a node's state-sealing key (AES-256-GCM)
STATE_KEY_BYTES = 32


class NodeHandler:
    """What a bank's node and the key holder's node share: the handler Flower calls (errors logged
    with their code, then re-raised so the server sees no reply), the opening checks of every
    message (the manifest, this node's identity, the server's payload), and the sealing of the
    node's state.

    The state a node keeps between messages (Flower's ``context.state``: the bank's SecAgg key seed
    and encoded input, its unrevealed CKKS ciphertext) leaves the ClientApp process only sealed
    with AES-256-GCM under a node-local 32-byte key (``state-key`` in the node config, default
    ``<identity key file>.state-key``, created 0600 from the OS CSPRNG on first use), bound as
    associated data to the federation digest, the member and the session: the SuperNode and
    Flower's local ClientApp channel hold only ciphertext, and a state from another run, member or
    federation, or a modified one, is refused (IntegrityError)."""

    member: str
    key_path: Path
    manifest_path: Path
    passphrase_file: Path | None
    sim_seed: int | None
    state_key_file: Path | None
    #: this node's role in the manifest
    role: ClassVar[str] = "client"
    #: what the INSECURE simulation seed makes predictable on this node (logged on every message)
    insecure_seed_effect: ClassVar[str] = "its randomness is predictable"

    @staticmethod
    def common_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
        """The node-config keys every node has: member, key, manifest, passphrase-file,
        state-key, insecure-sim-seed (KeyError for a missing required key)."""
        pf, sk, seed = (cfg.get(k) for k in ("passphrase-file", "state-key",
                                             "insecure-sim-seed"))
        return {"member": str(cfg["member"]), "key_path": Path(str(cfg["key"])),
                "manifest_path": Path(str(cfg["manifest"])),
                "passphrase_file": Path(str(pf)) if pf else None,
                "state_key_file": Path(str(sk)) if sk else None,
                "sim_seed": int(seed) if seed not in (None, "") else None}

    def federation(self) -> Federation:
        """The manifest, verified: every member signed it (SignatureError otherwise)."""
        from securefl.federation import load_manifest, verify_manifest

        return verify_manifest(load_manifest(self.manifest_path))

    def identity(self, fed: Federation) -> SigningKey:
        """This node's identity key; SignatureError unless the manifest lists it for ``member``
        in this node's role."""
        from securefl.federation import load_signing_key

        pw = self.passphrase_file.read_bytes().strip() if self.passphrase_file else None
        key = load_signing_key(self.key_path, pw)
        if not any(m.name == self.member and m.role == self.role for m in fed.members):
            raise SignatureError(f"{self.member!r} is not a {self.role} of federation "
                                 f"{fed.federation_id!r}")
        if key.verify_key != fed.verify_key(self.member):
            raise SignatureError(f"this node's identity key {key.verify_key.fingerprint()} is not "
                                 f"the key the manifest lists for {self.member!r}")
        return key

    def _handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        raise NotImplementedError

    def handle(self, env: Envelope, state: bytes | None) -> tuple[bytes, bytes]:
        """One message: returns (reply payload bytes, new sealed node state bytes)."""
        if self.sim_seed is not None:
            log.warning("%s: INSECURE simulation seed in use: %s (tests only)", self.member,
                        self.insecure_seed_effect)
        try:
            from securefl.crypto.aead import open_sealed, seal

            key, aad = self._state_key(), self._state_context(env)
            plain = open_sealed(key, state, aad=aad) if state else None
            reply, new_state = self._handle(env, plain)
            return reply, seal(key, new_state, aad=aad, random=SystemRandomSource())
        except SecureFLError as err:
            log.error("%s refused round %d stage %s: %s %s", self.member, env.round, env.stage,
                      err.code, err.message)
            raise

    @property
    def state_key_path(self) -> Path:
        return self.state_key_file or self.key_path.with_name(self.key_path.name + ".state-key")

    def _state_key(self) -> Secret:
        """The node-local state-sealing key: created on first use (0600, OS CSPRNG; concurrent
        ClientApp processes agree on one file), then read (refused if group/other can read it)."""
        from securefl.federation import read_private_file
        from securefl.storage import create_exclusive

        path = self.state_key_path
        if not path.exists():
            create_exclusive(path, SystemRandomSource().random_bytes(STATE_KEY_BYTES))
        raw = read_private_file(path, STATE_KEY_BYTES, "node state key")
        if len(raw) != STATE_KEY_BYTES:
            raise ConfigError(f"the node state key {path} must hold {STATE_KEY_BYTES} bytes")
        return Secret(raw, label="node-state-key")

    def _state_context(self, env: Envelope) -> AeadContext:
        from securefl.crypto.aead import AeadContext

        return AeadContext(session_id=env.session, round=0, sender=0, receiver=0,
                           purpose=f"securefl/deploy/node-state/v1/{env.federation}/{self.member}")

    def _open(self, env: Envelope) -> tuple[Federation, SigningKey, ServerPayload, VerifyKey]:
        """The verified manifest, this node's identity key, the decoded payload, the server's
        key; SignatureError for a message of another federation."""
        from securefl.deploy.messages import decode_server

        fed = self.federation()
        if env.federation != fed.digest:
            raise SignatureError("message for another federation manifest")
        identity = self.identity(fed)
        return fed, identity, decode_server(env.payload), fed.verify_key(fed.server)
