"""A malicious SecAgg server (with colluding clients) and an independent judge of what it learns.

Used by tests/test_secagg_adversary.py. Two halves, deliberately separate:

* **The adversary** (:class:`World`, :class:`Strategy`, :func:`run`). Instead of
  :class:`SecAggServer`, it crafts every server->client message for the *real* honest
  :class:`SecAggClient` machines (built exactly as ``secagg_helpers.make_round`` builds them), driven
  only through ``.receive()`` and, like a network, through ``encode_message`` / ``decode_message``.
  A typed securefl error from an honest client means that client stops (recorded). Colluding
  clients are ordinary machines whose secrets the adversary knows: it reads their private keys,
  opens every sealed share addressed to them, deals them arbitrary shares of its own, and signs
  whatever it likes with their identity keys (advertised keys under any plan, any survivor set).
* **The judge** (:func:`judge`). From what the adversary collected (:class:`Evidence`: masked inputs,
  every share revealed by honest clients, every share colluders hold, colluders' keys) it
  reconstructs each honest secret of which it holds >= t distinct shares (``shamir.combine``;
  checked against the ground truth), decides which masks are known, and applies the linear-algebra
  rule: a combination sum a_i y_i removes every unknown mask iff a_i = 0 for every i whose self
  mask b_i is unknown, a_i = a_j whenever i and j both added an unknown pairwise mask s_ij, and
  a_i = 0 when only i added one. The learnable sums are therefore the component sums of the
  "both added" graph without forced zeros; the judge *computes* each of them from the evidence and
  asserts it equals the true sum of those honest inputs, so a reported leak is a demonstrated one.
  Who masked with whom is ground truth read from the honest machines after the run
  (``_masked_with``): test instrumentation, not adversary knowledge. The judge uses no protocol
  bookkeeping (no server, no ``revealed`` dicts, no graph).

:class:`Engine` memoises honest machines by (client, hash of every message it received), cloning a
machine before each step, so the exhaustive search can branch on the server's choices without
repeating the expensive early stages; :func:`clone_client` is checked against fresh machines in the
suite.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from secagg_helpers import make_round

from securefl.crypto import aead, shamir
from securefl.crypto.kdf import X25519KeyPair, agree, derive_pair_key
from securefl.crypto.prg import accumulate_mask
from securefl.crypto.random import SeededRandomSource
from securefl.crypto.secret import Secret
from securefl.crypto.signing import SigningKey, sign_bound
from securefl.errors import SecureFLError
from securefl.protocol import quantize
from securefl.protocol.graph import random_graph
from securefl.protocol.messages import (
    ConsistencySignature,
    ForwardedShares,
    KeyRoster,
    MaskedInput,
    RosterEntry,
    SealedShare,
    ShareKeys,
    SignedSurvivors,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
    decode_message,
    encode_message,
)
from securefl.protocol.secagg import (
    ADVERTISE_DOMAIN,
    CONSISTENCY_DOMAIN,
    MASK_PURPOSE,
    SEED_SIZE,
    SHARE_PURPOSE,
    Assumptions,
    IdentityRoster,
    SecAggClient,
    SecAggConfig,
    Start,
    advertise_message,
    consistency_message,
    pair_sign,
    plan_digest,
    roster_digest,
    share_plaintext,
)

SELF = "self_mask"
KEY = "mask_key"


# --- honest machines ------------------------------------------------------------------------------
def clone_client(m: SecAggClient) -> SecAggClient:
    """An independent copy of a client machine: its mutable containers are copied, everything else
    (keys, Secrets, immutable sets, the seeded random source, which is used only up to the share
    stage) is shared. Checked against fresh machines in test_clone_matches_fresh_machines."""
    c = copy.copy(m)
    c._held = dict(m._held)
    c.revealed = dict(m.revealed)
    c._roster = dict(m._roster)
    return c


def unchecked_config(**fields: Any) -> SecAggConfig:
    """A SecAggConfig that skips the bounds check (to show what the checks prevent)."""
    cfg = object.__new__(SecAggConfig)
    for f in dataclasses.fields(SecAggConfig):
        value = fields.get(f.name, f.default)
        if value is dataclasses.MISSING:
            raise TypeError(f"missing field {f.name}")
        object.__setattr__(cfg, f.name, value)
    return cfg


@dataclass
class World:
    """One round: public config, identities, ground-truth inputs, honest and colluding machines after
    Start (their advertised keys)."""

    config: SecAggConfig  # the plan every honest client (except tailored ones) holds
    federation: IdentityRoster
    identities: dict[int, SigningKey]
    inputs: dict[int, NDArray[np.uint32]]
    machines: dict[int, SecAggClient]  # after Start
    adverts: dict[int, Any]  # AdvertiseKeys per client
    colluders: frozenset[int]
    seed: bytes

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.machines))

    @property
    def honest(self) -> tuple[int, ...]:
        return tuple(c for c in self.ids if c not in self.colluders)

    def plan(self, c: int) -> bytes:
        return plan_digest(self.machines[c].config)

    def graph(self) -> dict[int, frozenset[int]]:
        cfg = self.config
        return random_graph(cfg.participants, cfg.degree, cfg.graph_seed)


def build_world(
    n: int,
    *,
    assumptions: Assumptions | None = None,
    colluders: Iterable[int] = (),
    tailored: Mapping[int, SecAggConfig] | None = None,
    dim: int = 4,
    bits: int = 20,
    threshold: int | None = None,
    degree: int | None = None,
    neighbour_threshold: int | None = None,
    config: SecAggConfig | None = None,
    client_cls: type[SecAggClient] = SecAggClient,
    seed: bytes = b"seed",
) -> World:
    """Like make_round (same identities, inputs and key randomness), with colluders, per-client
    (tailored) configs, another client class, or an unchecked main config."""
    r = make_round(n, dim=dim, bits=bits, threshold=threshold, degree=degree,
                   neighbour_threshold=neighbour_threshold, assumptions=assumptions, seed=seed)
    cfg = config or r.config
    master = Secret(seed.ljust(32, b"\x00"))
    per = dict(tailored or {})
    machines: dict[int, SecAggClient] = {}
    adverts: dict[int, Any] = {}
    for c in range(n):
        m = client_cls(per.get(c, cfg), r.federation, c, r.identities[c], r.inputs[c],
                       SeededRandomSource(master, f"keys/{cfg.round}/{c}"))
        adverts[c] = m.receive(Start())[0]
        machines[c] = m
    return World(cfg, r.federation, r.identities, r.inputs, machines, adverts,
                 frozenset(colluders), seed)


def tailor(cfg: SecAggConfig, **changes: Any) -> SecAggConfig:
    """The same round with another application plan digest or other (valid) parameters."""
    return dataclasses.replace(cfg, **changes)


# --- the adversary's strategy ---------------------------------------------------------------------
@dataclass
class Strategy:
    """Every choice of the malicious server. Defaults are the honest server's (plus colluders)."""

    #: stage 1: ids left out of every roster (dropped at advertise) / of one client's roster
    roster_omit_all: frozenset[int] = frozenset()
    roster_omit: dict[int, frozenset[int]] = field(default_factory=dict)
    #: stage 1: (viewer, entry id) whose roster entry gets a forged signature in viewer's roster
    forge_entry: frozenset[tuple[int, int]] = frozenset()
    #: stage 2: directed share edges (sender, receiver) not forwarded
    withhold: frozenset[tuple[int, int]] = frozenset()
    #: stage 2: (owner, intended, actual): owner's share sealed for `intended` delivered to `actual`
    redirect: tuple[tuple[int, int, int], ...] = ()
    #: stage 2: also forward shares sealed under another roster digest (they fail authentication)
    forward_mismatched: bool = False
    #: stage 3: the survivor set sent to every client (None: every client whose masked input
    #: arrived, plus the colluders, within that client's roster) and per-client overrides
    survivors: tuple[int, ...] | None = None
    survivors_for: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: stage 3: honest clients the server ignores from here on (sends nothing more)
    ignore: frozenset[int] = frozenset()
    #: stage 4: alive / dropped lists (None: alive = the client's survivor list, dropped = every
    #: other roster member: the most it can ask for)
    alive_for: dict[int, tuple[int, ...]] = field(default_factory=dict)
    dropped: tuple[int, ...] | None = None
    dropped_for: dict[int, tuple[int, ...]] = field(default_factory=dict)
    #: stage 4: signatures: every valid one for the client's view (honest signers with the same
    #: view, colluders on anything), plus forged ones for these ids, plus replayed ones (honest
    #: signatures on another view) when `replay`
    forged_signers: frozenset[int] = frozenset()
    replay: bool = False
    colluders_sign: bool = True
    #: send an unmask request even when fewer than T valid signatures exist (the client aborts);
    #: False: a smart server does not bother (nothing would be revealed)
    send_hopeless: bool = True


@dataclass
class Outcome:
    """What happened: per honest client the error that stopped it (and the stage), and what the
    adversary collected."""

    errors: dict[int, tuple[str, SecureFLError]] = field(default_factory=dict)
    digests: dict[int, bytes] = field(default_factory=dict)
    rosters: dict[int, tuple[int, ...]] = field(default_factory=dict)
    share_keys: dict[int, ShareKeys] = field(default_factory=dict)
    ys: dict[int, bytes] = field(default_factory=dict)
    survivors: dict[int, tuple[int, ...]] = field(default_factory=dict)
    signed: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (message, sig)
    requests: dict[int, UnmaskRequest] = field(default_factory=dict)
    unmask: dict[int, UnmaskShares] = field(default_factory=dict)
    #: (owner, kind) -> {x: share} held by colluders (opened from honest ShareKeys)
    colluder_shares: dict[tuple[int, str], dict[int, int]] = field(default_factory=dict)
    #: ground truth (instrumentation): honest machine after the share and masking stages
    after_roster: dict[int, SecAggClient] = field(default_factory=dict)
    after_masking: dict[int, SecAggClient] = field(default_factory=dict)

    def error(self, c: int) -> SecureFLError | None:
        e = self.errors.get(c)
        return None if e is None else e[1]

    def error_types(self) -> dict[int, str]:
        return {c: type(e).__name__ for c, (_, e) in sorted(self.errors.items())}


class Engine:
    """Steps honest machines, memoised by (client, hash of all messages received), cloning before
    each step so a branch never disturbs another."""

    def __init__(self, world: World) -> None:
        self.world = world
        self._memo: dict[bytes, tuple[SecAggClient | None, Any]] = {}
        self._roots = {c: (hashlib.sha256(b"%d" % c).digest()) for c in world.honest}
        self._parent: dict[bytes, SecAggClient] = {
            self._roots[c]: world.machines[c] for c in world.honest}
        self._aux: dict[Any, Any] = {}  # adversary-side caches (colluder shares, signatures)

    def root(self, c: int) -> bytes:
        return self._roots[c]

    def step(self, key: bytes, msg: Any) -> tuple[bytes, SecAggClient | None, Any]:
        """Deliver msg (over the wire) to the machine at `key`. Returns (new key, machine after or
        None, outputs list or the typed error)."""
        data = encode_message(msg)
        k2 = hashlib.sha256(key + data).digest()
        hit = self._memo.get(k2)
        if hit is None:
            m = clone_client(self._parent[key])
            try:
                out: Any = m.receive(decode_message(data))
                hit = (m, out)
                self._parent[k2] = m
            except SecureFLError as exc:
                hit = (None, exc)
            self._memo[k2] = hit
        return k2, hit[0], hit[1]


# --- adversary-side cryptography (colluders' secrets) ---------------------------------------------
def _entry(world: World, c: int, *, plan: bytes, eng: Engine) -> RosterEntry:
    """Client c's roster entry as shown to a viewer holding `plan`: honest entries are what they
    signed; colluders re-sign their keys under whatever plan the viewer holds."""
    a = world.adverts[c]
    if c not in world.colluders or plan == world.plan(c):
        return RosterEntry(a.sender, a.cipher_pk, a.mask_pk, a.signature)
    ck = ("advert", c, plan)
    sig = eng._aux.get(ck)
    if sig is None:
        sig = sign_bound(world.identities[c], domain=ADVERTISE_DOMAIN,
                         session_id=world.config.session_id, round_=world.config.round,
                         message=advertise_message(c, a.cipher_pk, a.mask_pk, plan))
        eng._aux[ck] = sig
    return RosterEntry(a.sender, a.cipher_pk, a.mask_pk, sig)


def _pair_share_key(world: World, me: int, peer: int) -> Secret:
    m = world.machines[me]
    assert m._cipher is not None
    cfg = world.config
    return derive_pair_key(agree(m._cipher.private, world.adverts[peer].cipher_pk),
                           purpose=SHARE_PURPOSE, session_id=cfg.session_id, round_=cfg.round,
                           i=me, j=peer)


def colluder_open(world: World, colluder: int, sender: int, ct: bytes, digest: bytes
                  ) -> tuple[int, int]:
    """Open a share sealed by `sender` for `colluder` (the adversary holds the colluder's key)."""
    cfg = world.config
    pt = aead.open_sealed(_pair_share_key(world, colluder, sender), ct,
                          aad=aead.AeadContext(cfg.session_id, cfg.round, sender, colluder,
                                               binding=digest))
    key_share = shamir.decode_share(pt[8: 8 + shamir.SHARE_SIZE])
    mask_share = shamir.decode_share(pt[8 + shamir.SHARE_SIZE:])
    return key_share, mask_share


def colluder_share(world: World, eng: Engine, colluder: int, receiver: int, digest: bytes) -> bytes:
    """A share sealed by a colluder for an honest receiver under that receiver's roster digest
    (its content is the adversary's choice: arbitrary field elements)."""
    ck = ("share", colluder, receiver, digest)
    ct = eng._aux.get(ck)
    if ct is None:
        cfg = world.config
        rnd = SeededRandomSource(Secret(b"adversary".ljust(32, b"\x00")),
                                 f"{colluder}/{receiver}/{digest.hex()}")
        pt = share_plaintext(colluder, receiver, rnd.randbelow(shamir.PRIME),
                             rnd.randbelow(shamir.PRIME))
        ct = aead.seal(_pair_share_key(world, colluder, receiver), pt,
                       aad=aead.AeadContext(cfg.session_id, cfg.round, colluder, receiver,
                                            binding=digest), random=rnd)
        eng._aux[ck] = ct
    return ct


def colluder_signature(world: World, eng: Engine, colluder: int, message: bytes) -> bytes:
    ck = ("sig", colluder, message)
    sig = eng._aux.get(ck)
    if sig is None:
        cfg = world.config
        sig = sign_bound(world.identities[colluder], domain=CONSISTENCY_DOMAIN,
                         session_id=cfg.session_id, round_=cfg.round, message=message)
        eng._aux[ck] = sig
    return sig


# --- one round against the strategy ----------------------------------------------------------------
def run(world: World, s: Strategy, eng: Engine | None = None) -> Outcome:
    """Play one round: the adversary crafts every server message from `s`."""
    eng = eng or Engine(world)
    cfg = world.config
    sid, rnd = cfg.session_id, cfg.round
    out = Outcome()
    keys: dict[int, bytes] = {c: eng.root(c) for c in world.honest}
    live = set(world.honest)

    def deliver(c: int, stage: str, msg: Any) -> Any:
        k2, m, res = eng.step(keys[c], msg)
        if isinstance(res, SecureFLError):
            out.errors[c] = (stage, res)
            live.discard(c)
            return None
        keys[c] = k2
        return m, res

    graph = world.graph()
    # stage 1: rosters (per client)
    for h in world.honest:
        omit = s.roster_omit_all | s.roster_omit.get(h, frozenset())
        ids = tuple(c for c in world.ids if c not in omit)
        plan = world.plan(h)
        entries = []
        for c in ids:
            e = _entry(world, c, plan=plan, eng=eng)
            if (h, c) in s.forge_entry:
                e = RosterEntry(e.sender, e.cipher_pk, e.mask_pk, bytes(64))
            entries.append(e)
        out.rosters[h] = ids
        out.digests[h] = roster_digest(sid, rnd, entries)
        got = deliver(h, "roster", KeyRoster(session_id=sid, round=rnd, entries=entries))
        if got is not None:
            m, msgs = got
            out.after_roster[h] = m
            out.share_keys[h] = msgs[0]
    # colluders open every share addressed to them
    for h, sk in out.share_keys.items():
        for sh in sk.shares:
            if sh.peer in world.colluders:
                k, b = colluder_open(world, sh.peer, h, sh.ciphertext, out.digests[h])
                out.colluder_shares.setdefault((h, KEY), {})[sh.peer + 1] = k
                out.colluder_shares.setdefault((h, SELF), {})[sh.peer + 1] = b
    # stage 2: forwarded shares
    for h in sorted(live):
        nbrs = graph[h] & set(out.rosters[h])
        fwd: dict[int, bytes] = {}
        for snd in world.ids:
            if snd == h or (snd, h) in s.withhold:
                continue
            if snd in world.colluders:
                if snd in nbrs:
                    fwd[snd] = colluder_share(world, eng, snd, h, out.digests[h])
                continue
            sk = out.share_keys.get(snd)
            if sk is None:
                continue
            mine = [x for x in sk.shares if x.peer == h]
            if mine and (out.digests[snd] == out.digests[h] or s.forward_mismatched):
                fwd[snd] = mine[0].ciphertext
        for owner, intended, actual in s.redirect:
            sk = out.share_keys.get(owner)
            if actual == h and sk is not None:
                meant = [x for x in sk.shares if x.peer == intended]
                if meant:
                    fwd[owner] = meant[0].ciphertext
        shares = [SealedShare(peer=p, ciphertext=ct) for p, ct in sorted(fwd.items())]
        got = deliver(h, "shares", ForwardedShares(session_id=sid, round=rnd, shares=shares))
        if got is not None:
            m, msgs = got
            y = msgs[0]
            assert isinstance(y, MaskedInput) and y.sender == h
            out.after_masking[h] = m
            out.ys[h] = y.data
    # stage 3: survivor lists
    for h in sorted(live - s.ignore):
        default = s.survivors if s.survivors is not None else tuple(
            c for c in out.rosters[h] if c in out.ys or c in world.colluders)
        u3 = tuple(s.survivors_for.get(h, default))
        out.survivors[h] = u3
        got = deliver(h, "survivors", SurvivorList(session_id=sid, round=rnd, survivors=list(u3)))
        if got is not None:
            sig = got[1][0]
            assert isinstance(sig, ConsistencySignature)
            out.signed[h] = (consistency_message(world.plan(h), out.digests[h], u3), sig.signature)
    # stage 4: unmask requests
    for h in sorted(live - s.ignore):
        u3 = out.survivors[h]
        msg = consistency_message(world.plan(h), out.digests[h], u3)
        alive = tuple(s.alive_for.get(h, u3))
        dropped = s.dropped_for.get(h, s.dropped)
        if dropped is None:
            dropped = tuple(c for c in out.rosters[h] if c not in set(alive))
        sigs: dict[int, bytes] = {j: sg for j, (mj, sg) in out.signed.items()
                                  if mj == msg and j in set(u3)}
        if s.colluders_sign:
            for col in sorted(world.colluders & set(u3)):
                sigs[col] = colluder_signature(world, eng, col, msg)
        valid = len(sigs)
        if s.replay:
            for j, (mj, sg) in out.signed.items():
                if mj != msg and j in set(u3):
                    sigs[j] = sg
        for j in s.forged_signers:
            sigs.setdefault(j, hashlib.sha512(b"forged%d" % j).digest())
        if valid < world.machines[h].config.threshold and not s.send_hopeless:
            continue  # the client would abort before revealing anything
        req = UnmaskRequest(session_id=sid, round=rnd, alive=list(alive), dropped=list(dropped),
                            signatures=[SignedSurvivors(j, sg) for j, sg in sorted(sigs.items())])
        out.requests[h] = req
        got = deliver(h, "unmask", req)
        if got is not None:
            res = got[1][0]
            assert isinstance(res, UnmaskShares) and res.sender == h
            out.unmask[h] = res
    return out


# --- evidence and ground truth ----------------------------------------------------------------------
@dataclass
class Evidence:
    """Everything the adversary (server + colluders) holds after the round."""

    session_id: bytes
    round: int
    bits: int
    dim: int
    mask_pks: dict[int, bytes]  # public: advertised mask keys
    colluders: frozenset[int]
    colluder_mask_keys: dict[int, bytes]
    ys: dict[int, bytes]  # honest masked inputs (packed)
    shares: dict[tuple[int, str], dict[int, int]]  # (owner, kind) -> {x: share}


@dataclass
class Truth:
    """Ground truth, known to the test only."""

    inputs: dict[int, NDArray[np.uint32]]
    self_seeds: dict[int, bytes]
    mask_keys: dict[int, bytes]
    masked_with: dict[int, frozenset[int]]
    thresholds: dict[int, int]


def evidence(world: World, out: Outcome) -> tuple[Evidence, Truth]:
    shares: dict[tuple[int, str], dict[int, int]] = {
        k: dict(v) for k, v in out.colluder_shares.items()}
    for h, u in out.unmask.items():
        for r in u.self_mask_shares:
            shares.setdefault((r.owner, SELF), {})[h + 1] = shamir.decode_share(r.share)
        for r in u.mask_key_shares:
            shares.setdefault((r.owner, KEY), {})[h + 1] = shamir.decode_share(r.share)
    col_keys = {}
    for c in world.colluders:
        mk = world.machines[c]._mask
        assert mk is not None
        col_keys[c] = mk.private.expose()
    cfg = world.config
    ev = Evidence(cfg.session_id, cfg.round, cfg.bits, cfg.dim,
                  {c: a.mask_pk for c, a in world.adverts.items()}, world.colluders, col_keys,
                  dict(out.ys), shares)
    seeds, mkeys = {}, {}
    for h in world.honest:
        m = out.after_roster.get(h)
        if m is not None and m._self_seed is not None:
            seeds[h] = m._self_seed.expose()
        mk = world.machines[h]._mask
        assert mk is not None
        mkeys[h] = mk.private.expose()
    truth = Truth(
        inputs={h: world.inputs[h] for h in world.honest},
        self_seeds=seeds,
        mask_keys=mkeys,
        masked_with={h: m._masked_with for h, m in out.after_masking.items()},
        thresholds={h: world.machines[h].config.neighbour_threshold for h in world.honest},
    )
    return ev, truth


# --- the judge ----------------------------------------------------------------------------------------
@dataclass
class Verdict:
    known_self_masks: frozenset[int]
    known_mask_keys: frozenset[int]
    learnable: list[frozenset[int]]  # honest sets whose input sum the adversary computed
    recovered: dict[frozenset[int], NDArray[np.uint32]]

    @property
    def min_honest(self) -> int | None:
        return min((len(s) for s in self.learnable), default=None)

    def below(self, bound: int) -> list[frozenset[int]]:
        return sorted((s for s in self.learnable if len(s) < bound), key=lambda s: (len(s), sorted(s)))

    def explain(self) -> str:
        return (f"learnable honest sums over {[sorted(s) for s in sorted(self.learnable, key=len)]}; "
                f"self masks known for {sorted(self.known_self_masks)}, mask keys known for "
                f"{sorted(self.known_mask_keys)}")


_AGREE_CACHE: dict[tuple[bytes, bytes, bytes, int, int, int], Secret] = {}


def _pair_mask_seed(ev: Evidence, sk: bytes, pk: bytes, i: int, j: int) -> Secret:
    ck = (sk, pk, ev.session_id, ev.round, min(i, j), max(i, j))
    seed = _AGREE_CACHE.get(ck)
    if seed is None:
        seed = derive_pair_key(agree(Secret(sk), pk), purpose=MASK_PURPOSE,
                               session_id=ev.session_id, round_=ev.round, i=i, j=j)
        if len(_AGREE_CACHE) < 200_000:
            _AGREE_CACHE[ck] = seed
    return seed


def judge(ev: Evidence, truth: Truth) -> Verdict:
    """Which sums of honest inputs can the adversary compute? (see the module docstring)"""
    known_b: dict[int, bytes] = {}
    known_k: dict[int, bytes] = {}
    for (owner, kind), pts in ev.shares.items():
        if owner in ev.colluders:
            continue
        t = truth.thresholds[owner]
        if len(pts) < t:
            continue  # fewer than t Shamir shares: information-theoretically hidden
        secret = shamir.combine(pts, t, SEED_SIZE)
        if kind == SELF:
            assert secret == truth.self_seeds[owner], f"self mask of {owner} reconstructs wrong"
            known_b[owner] = secret
        else:
            assert secret == truth.mask_keys[owner], f"mask key of {owner} reconstructs wrong"
            known_k[owner] = secret

    ys = set(ev.ys)
    parent = {i: i for i in ys}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def known(i: int, j: int) -> bool:
        return j in ev.colluders or i in ev.colluders or i in known_k or j in known_k

    forced = {i for i in ys if i not in known_b}
    for i in sorted(ys):
        for j in truth.masked_with[i]:
            if known(i, j):
                continue
            if j in ys and i in truth.masked_with[j]:
                parent[find(i)] = find(j)
            else:
                forced.add(i)  # only i added this unknown mask
    comps: dict[int, set[int]] = {}
    for i in ys:
        comps.setdefault(find(i), set()).add(i)
    learnable = [frozenset(c) for c in comps.values() if not c & forced]

    recovered: dict[frozenset[int], NDArray[np.uint32]] = {}
    mod = np.uint32((1 << ev.bits) - 1) if ev.bits < 32 else np.uint32(0xFFFFFFFF)
    for comp in learnable:
        acc = np.zeros(ev.dim, dtype=np.uint32)
        for i in sorted(comp):
            acc += quantize.unpack(ev.ys[i], ev.bits, ev.dim)
            accumulate_mask(acc, Secret(known_b[i]), -1)
            for j in sorted(truth.masked_with[i]):
                if not known(i, j):
                    assert j in comp  # both added: cancels inside the component
                    continue
                if j in ev.colluders:
                    seed = _pair_mask_seed(ev, ev.colluder_mask_keys[j], ev.mask_pks[i], i, j)
                elif i in known_k:
                    seed = _pair_mask_seed(ev, known_k[i], ev.mask_pks[j], i, j)
                else:
                    seed = _pair_mask_seed(ev, known_k[j], ev.mask_pks[i], i, j)
                accumulate_mask(acc, seed, -pair_sign(i, j))
        acc &= mod
        true = np.zeros(ev.dim, dtype=np.uint64)
        for i in comp:
            true += truth.inputs[i].astype(np.uint64)
        expect = (true % np.uint64(1 << ev.bits)).astype(np.uint32)
        assert np.array_equal(acc, expect), f"judge: computed sum over {sorted(comp)} is wrong"
        recovered[comp] = acc
    return Verdict(frozenset(known_b), frozenset(known_k), learnable, recovered)


def judge_run(world: World, out: Outcome) -> Verdict:
    return judge(*evidence(world, out))


# --- synthetic views for judge-only tests ----------------------------------------------------------------
def synthetic(n: int, masked_with: Mapping[int, Iterable[int]], *, t: int, dim: int = 4,
              bits: int = 16, seed: str = "synthetic") -> tuple[Evidence, Truth, dict[str, Any]]:
    """Hand-made masked inputs, computed here without the client code: client i adds PRG(b_i)
    and sign(i, j) PRG(s_ij) for j in masked_with[i]. Returns evidence with no shares yet, the
    truth, and the dealt shares (``dealt[(owner, kind)] = {x: share}``, x = holder + 1)."""
    rnd = SeededRandomSource(Secret(b"judge".ljust(32, b"\x00")), seed)
    sid, round_ = b"J" * 16, 7
    keys = {i: X25519KeyPair.generate(rnd) for i in range(n)}
    seeds = {i: rnd.random_bytes(SEED_SIZE) for i in range(n)}
    inputs = {i: (rnd.uint32(dim) & np.uint32((1 << bits) - 1)).astype(np.uint32)
              for i in range(n)}
    mw = {i: frozenset(masked_with.get(i, ())) for i in range(n)}
    ys = {}
    for i in range(n):
        acc = inputs[i].copy()
        accumulate_mask(acc, Secret(seeds[i]), 1)
        for j in sorted(mw[i]):
            s = derive_pair_key(agree(keys[i].private, keys[j].public), purpose=MASK_PURPOSE,
                                session_id=sid, round_=round_, i=i, j=j)
            accumulate_mask(acc, s, pair_sign(i, j))
        acc &= np.uint32((1 << bits) - 1)
        ys[i] = quantize.pack(acc, bits)
    xs = [i + 1 for i in range(n)]
    dealt: dict[tuple[int, str], dict[int, int]] = {}
    for i in range(n):
        dealt[(i, SELF)] = shamir.split(seeds[i], t, xs, rnd)
        dealt[(i, KEY)] = shamir.split(keys[i].private.expose(), t, xs, rnd)
    ev = Evidence(sid, round_, bits, dim, {i: keys[i].public for i in range(n)}, frozenset(), {},
                  ys, {})
    truth = Truth(inputs, seeds, {i: keys[i].private.expose() for i in range(n)}, mw,
                  dict.fromkeys(range(n), t))
    return ev, truth, {"dealt": dealt}
