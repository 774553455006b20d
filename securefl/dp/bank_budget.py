"""A bank's own privacy budget: a persistent, append-only ledger in the bank's directory, with caps.

A malicious server enforces nothing for a bank, and a deployment's node state starts empty for each
run, so every bank keeps what it has spent, across runs, in its own file (``privacy-budget.jsonl``
in a directory it chooses) and checks every round plan against its own caps before it takes part:

* ``record_epsilon_cap``: the most record-level epsilon (its DP-SGD steps, party ``bank:<name>``)
  the bank will ever spend, over every run;
* ``client_epsilon_cap``: the most client-level epsilon (the federation's noised sums it took part
  in) it will ever spend.

They are caps on what is *spent*, not noise calibration: ``--record-epsilon`` sizes the DP-SGD
noise of one run's plan; the caps refuse (:class:`~securefl.errors.BudgetExceededError`) a round
that would take the bank past them, whichever run, server or plan asks.

Each line is a :class:`BudgetCharge`: the ledger drafts of one round the bank agreed to take part
in, charged at the worst admissible outcome (the plan's events, before the bank's input leaves), in
a SHA-256 hash chain like the run ledger's (``prev_hash``, gap-free ``seq``). Crash safety: the
bank checks and appends under an exclusive lock, fsyncs, and only then takes part, so a crash can
over-count a round it never joined but never under-count one it did; a torn last line (a crash
mid-append, before the bank went on) is dropped when the file is next opened. Epsilon is recomputed
from the charged events (never stored), with the RDP accountant by default.

A deployed bank (and one behind ``securefl_mod``) also marks the ledger's length and head hash in its
state directory, next to its session counter (``anchor_dir``, :data:`ANCHOR_FILE`), after every
charge: a ledger later missing, cut back to a prefix (every prefix of a hash chain from genesis
verifies) or replaced is refused (LedgerError) instead of reading as less spent. Losing the state
directory together with the ledger is not detected; only a monotonic counter outside the bank's
files would be.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from securefl.dp.accountants import epsilon_of_events, to_add_remove
from securefl.dp.ledger import GENESIS_HASH, MAX_ENTRY_BYTES, MAX_LEDGER_BYTES, Draft, Level
from securefl.errors import BudgetExceededError, ConfigError, LedgerError, PrivacyError
from securefl.storage import atomic_write_json, exclusive_lock

if TYPE_CHECKING:
    from securefl.protocol.plan import NoisePlan
    from securefl.protocol.quantize import Encoding

__all__ = [
    "ANCHOR_FILE",
    "BUDGET_FILE",
    "BankBudget",
    "BudgetCaps",
    "BudgetCharge",
    "caps_from_node_config",
    "charge_round",
    "planned_round_drafts",
]

#: the bank's budget ledger, inside the directory it names
BUDGET_FILE = "privacy-budget.jsonl"
#: the mark of the ledger's length and head hash, in the bank's state directory (next to its
#: session counter)
ANCHOR_FILE = "privacy-budget-anchor.json"
BUDGET_VERSION = 1
_LEVELS: tuple[Level, ...] = ("record", "client")


@dataclass(frozen=True)
class BudgetCaps:
    """A bank's lifetime caps (None: no cap at that level) at ``delta``, by ``accountant``."""

    record_epsilon_cap: float | None = None
    client_epsilon_cap: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        for name in ("record_epsilon_cap", "client_epsilon_cap"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not math.isfinite(v) or v <= 0):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta!r}")

    def cap(self, level: str) -> float | None:
        return self.record_epsilon_cap if level == "record" else self.client_epsilon_cap


class BudgetCharge(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One round the bank agreed to take part in: ``session`` (hex run/session id), ``round``,
    the ``drafts`` it was charged (its record-level DP-SGD and the federation's client-level event,
    worst admissible case), chained by ``prev_hash`` (hex SHA-256 of the previous line)."""

    version: int = BUDGET_VERSION
    seq: Annotated[int, msgspec.Meta(ge=0)]
    session: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{1,128}$")]
    round: Annotated[int, msgspec.Meta(ge=0)]
    drafts: list[Draft]
    prev_hash: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


_ENCODER = msgspec.json.Encoder(order="sorted")
_DECODER = msgspec.json.Decoder(BudgetCharge)


def _decode(line: bytes, lineno: int, path: Path) -> BudgetCharge:
    if len(line) > MAX_ENTRY_BYTES:
        raise LedgerError(f"{path} line {lineno}: {len(line)} bytes exceeds {MAX_ENTRY_BYTES}")
    try:
        charge: BudgetCharge = _DECODER.decode(line)
    except (msgspec.ValidationError, msgspec.DecodeError, PrivacyError) as exc:
        raise LedgerError(f"{path} line {lineno}: {exc}") from exc
    if charge.version != BUDGET_VERSION:
        raise LedgerError(f"{path} line {lineno}: unsupported version {charge.version!r}")
    return charge


class BankBudget:
    """The bank's persistent budget ledger in ``directory`` (created if missing), for ``bank``.

    >>> budget = BankBudget(tmp, "alpha", BudgetCaps(record_epsilon_cap=8.0))   # doctest: +SKIP
    >>> budget.charge(planned_drafts, session=session_hex, round_=3)             # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike[str], bank: str, caps: BudgetCaps, *,
                 anchor_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(directory) / BUDGET_FILE
        self.bank = bank
        self.caps = caps
        #: where the mark of the ledger's length and head lives (the bank's state directory,
        #: next to its session counter); None: no mark (a library user's own budget)
        self.anchor = Path(anchor_dir) / ANCHOR_FILE if anchor_dir is not None else None

    def __repr__(self) -> str:
        return f"BankBudget({str(self.path)!r}, {self.bank!r}, {self.caps!r})"

    # -- reading ------------------------------------------------------------------------------------
    def charges(self) -> list[BudgetCharge]:
        """Every charge on file, verified (LedgerError naming the first bad line)."""
        with self._locked():
            return self._read()

    def spent(self) -> dict[str, float]:
        """Epsilon spent so far per level ("record", "client") at the caps' delta."""
        return self._epsilons(self.charges(), [])

    # -- the check ----------------------------------------------------------------------------------
    def check(self, planned: Sequence[Draft]) -> dict[str, float]:
        """Epsilon per level after ``planned``; BudgetExceededError if it passes a cap. Nothing
        is recorded."""
        with self._locked():
            return self._check(self._read(), planned)

    def charge(self, planned: Sequence[Draft], *, session: str | bytes, round_: int
               ) -> dict[str, float]:
        """Check ``planned`` against the caps and, if it fits, append it durably (before the
        bank takes part). Returns epsilon per level after the charge. Every call is charged, even
        for a (session, round) already on file: a server replaying a session id must not get a
        second release for free (a retried message over-counts, the safe direction)."""
        sid = session.hex() if isinstance(session, bytes) else session
        drafts = list(planned)
        with self._locked():
            charges = self._read()
            after = self._check(charges, drafts)
            head = (hashlib.sha256(_ENCODER.encode(charges[-1])).hexdigest() if charges
                    else GENESIS_HASH)
            new = BudgetCharge(seq=len(charges), session=sid, round=round_, drafts=drafts,
                               prev_hash=head)
            line = _ENCODER.encode(new)
            with open(self.path, "ab") as fh:
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            if self.anchor is not None:  # after the append: the mark is never ahead of the file
                atomic_write_json(self.anchor, {"budget_file": str(self.path),
                                                "length": len(charges) + 1,
                                                "head": hashlib.sha256(line).hexdigest()},
                                  mode=0o600)
            return after

    # -- internals ----------------------------------------------------------------------------------
    def _check(self, charges: list[BudgetCharge], planned: Sequence[Draft]) -> dict[str, float]:
        after = self._epsilons(charges, planned)
        over = [f"{lv} epsilon {eps:.4g} > cap {self.caps.cap(lv):g}" for lv, eps in after.items()
                if self.caps.cap(lv) is not None and eps > float(self.caps.cap(lv) or 0)]
        if over:
            raise BudgetExceededError(
                f"bank {self.bank!r} refuses this round: it would spend {'; '.join(over)} "
                f"(delta = {self.caps.delta:g}, {self.caps.accountant}, over every run in "
                f"{self.path})",
                hint="the bank's own caps (record_epsilon_cap, client_epsilon_cap) are spent; "
                     "raise them only by the bank's own decision")
        return after

    def _epsilons(self, charges: Sequence[BudgetCharge], planned: Sequence[Draft]
                  ) -> dict[str, float]:
        drafts = [d for ch in charges for d in ch.drafts] + list(planned)
        out: dict[str, float] = {}
        for level in _LEVELS:
            events = [d.event if d.neighbouring == "add_remove" else to_add_remove(d.event)
                      for d in drafts if d.level == level and self._mine(d)]
            out[level] = (epsilon_of_events(events, self.caps.delta, self.caps.accountant)
                          if events else 0.0)
        return out

    def _mine(self, d: Draft) -> bool:
        """A record-level draft counts if it is this bank's; a client-level one always (the
        federation's noised sum is what client-level DP protects this bank's participation in)."""
        return d.level == "client" or d.party == f"bank:{self.bank}"

    def _locked(self) -> AbstractContextManager[None]:
        """An exclusive lock on ``<file>.lock``: check-and-append is one step even when several
        processes of the same bank (a deployment's ClientApps) act at once."""
        return exclusive_lock(self.path.with_name(self.path.name + ".lock"))

    def _read(self) -> list[BudgetCharge]:
        """Verified charges; a torn last line (crash mid-append) is cut off the file."""
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > MAX_LEDGER_BYTES:
                    raise LedgerError(f"{self.path}: {size} bytes exceeds {MAX_LEDGER_BYTES}")
                data = fh.read(size)
        except FileNotFoundError:
            data = b""
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
            data = data[:cut]
        out: list[BudgetCharge] = []
        head = GENESIS_HASH
        heads: list[str] = []
        for i, line in enumerate(data.split(b"\n")[:-1] if data else []):
            charge = _decode(line, i + 1, self.path)
            if charge.seq != i or charge.prev_hash != head:
                raise LedgerError(f"{self.path} line {i + 1}: breaks the hash chain (seq "
                                  f"{charge.seq}, expected {i}): tampered, missing or reordered")
            out.append(charge)
            head = hashlib.sha256(line).hexdigest()
            heads.append(head)
        self._check_anchor(heads)
        return out

    def _check_anchor(self, heads: list[str]) -> None:
        """The ledger must reach the mark the bank last wrote in its state directory: a ledger
        that is missing, reset or cut back to an earlier prefix (each of which verifies on its own,
        the chain starting at genesis) would read as less spent and lift the lifetime caps."""
        if self.anchor is None:
            return
        try:
            raw = json.loads(self.anchor.read_text("utf-8"))
        except FileNotFoundError:
            return  # no charge was made under this state directory yet
        except (OSError, ValueError) as exc:
            raise LedgerError(f"unreadable budget mark {self.anchor}: {exc}") from exc
        try:
            length, mark = int(raw["length"]), str(raw["head"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"malformed budget mark {self.anchor}: {exc}") from exc
        if length > len(heads) or (length > 0 and heads[length - 1] != mark):
            raise LedgerError(
                f"bank {self.bank!r}: its budget ledger {self.path} holds {len(heads)} charges "
                f"but the bank's state ({self.anchor}) marks {length} with another head: the "
                "ledger is missing, reset or rolled back, and charging against it would lift "
                "the bank's lifetime caps",
                hint="restore the budget ledger from its backup; never delete or truncate it "
                     "(docs/deployment.md 4b)")


def charge_round(budget: BankBudget | None, planned: Sequence[Draft], *, session: str | bytes,
                 round_: int, record_noise: bool, client_noise: bool) -> dict[str, float]:
    """The one call a bank makes before it takes part in a round: charge ``planned`` to its own
    budget (BudgetExceededError if that would pass a cap). A round without the noise a cap
    meters (``record_noise``: DP-SGD; ``client_noise``: the client-level share) has an unbounded
    epsilon at that level, so a bank with that cap refuses it. No budget configured: nothing to do."""
    if budget is None:
        return {}
    for level, cap, noised in (("record", budget.caps.record_epsilon_cap, record_noise),
                               ("client", budget.caps.client_epsilon_cap, client_noise)):
        if cap is not None and not noised:
            raise BudgetExceededError(
                f"bank {budget.bank!r} refuses round {round_}: the plan adds no {level}-level "
                f"noise, so its {level}-level epsilon is unbounded ({level}-epsilon-cap {cap:g})")
    return budget.charge(planned, session=session, round_=round_)


def caps_from_node_config(cfg: Mapping[str, Any], bank: str, state_dir: Path
                          ) -> BankBudget | None:
    """A deployed bank's budget from its ``--node-config``: ``record-epsilon-cap``,
    ``client-epsilon-cap`` (either enables it), ``budget-delta`` (default 1e-5) and ``budget-dir``
    (required with a cap: the lifetime ledger lives where the operator chose and backs up). The
    ledger's length and head are marked in ``state_dir`` (the bank's session-counter directory),
    so a ledger lost or rolled back later is refused (LedgerError). None without a cap."""
    rec, cli = cfg.get("record-epsilon-cap"), cfg.get("client-epsilon-cap")
    if rec in (None, "") and cli in (None, ""):
        return None
    try:
        caps = BudgetCaps(record_epsilon_cap=float(rec) if rec not in (None, "") else None,
                          client_epsilon_cap=float(cli) if cli not in (None, "") else None,
                          delta=float(cfg.get("budget-delta", 1e-5)))
    except ValueError as exc:
        raise ConfigError(f"node config: budget caps must be numbers ({exc})") from exc
    if cfg.get("budget-dir") in (None, ""):
        raise ConfigError("node config: a budget cap needs budget-dir, the directory of the "
                          "bank's lifetime privacy ledger",
                          hint="choose a durable, backed-up directory: a lost ledger is refused, "
                               "it cannot be rebuilt")
    return BankBudget(Path(str(cfg["budget-dir"])), bank, caps, anchor_dir=state_dir)


def planned_round_drafts(*, bank: str, round_: int, record: Any = None,
                         noise: NoisePlan | None = None, n_participants: int = 1,
                         clip_norm: float = 1.0, colluders: int = 0,
                         encoding: Encoding | None = None, dim: int | None = None
                         ) -> list[Draft]:
    """What a bank charges before it takes part in a round, from the round's public plan: its
    DP-SGD run (``record``: a :class:`securefl.dp.dpsgd.DpSgdRun` of the planned schedule) and
    the client-level event of the worst admissible outcome (``noise`` seen by ``colluders``
    colluding banks; ``encoding``/``dim`` for SecAgg), the same events the round records."""
    from securefl.dp.budget import planned_client_events

    drafts: list[Draft] = []
    if record is not None:
        drafts.append(record.draft(round=round_, bank=bank))
    if noise is not None and noise.noise_multiplier > 0:
        seen = noise.seen_by(colluders)
        drafts += [Draft(round=round_, level="client", party="federation", event=ev,
                         clip_norm=clip_norm, participants=n_participants,
                         survivors=seen.min_survivors, sampling="all", colluders=seen.colluders)
                   for ev in planned_client_events(seen, n_participants, encoding=encoding,
                                                   dim=dim)]
    return drafts
