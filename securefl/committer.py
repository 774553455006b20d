"""The end of every round, whatever drove it (DESIGN.md section 3, steps 6 and 7): once the
aggregate is known, :class:`RoundCommitter` turns the typed round outcome (:class:`Release`, or
the error of an aborted round) into the server update, the round's ledger events, its audit record
and one atomic commit (securefl.audit.store.RunStore.commit_round).

``securefl run`` / :func:`securefl.train` (securefl.runtime.Engine) and a deployment's server
(securefl.deploy.server) commit through it by way of the round engine (securefl.engine.RoundEngine),
the Flower workflow (securefl.flower.workflow) directly. What differs between them is passed in,
not re-implemented:

- how the global model moves (:class:`ServerModel`): securefl's server optimizer over a torch model
  (:class:`TorchServerModel`), or a Flower strategy's ``aggregate_fit``;
- how the client-level event is described in the ledger (:class:`ClientEvents`: sampling, where
  the noise came from);
- how the new model is scored (``evaluate``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from securefl.audit.store import RunStore
    from securefl.dp.events import Event
    from securefl.dp.ledger import Draft, Ledger, NoiseSource, Sampling
    from securefl.protocol.plan import NoisePlan
    from securefl.protocol.quantize import Encoding

__all__ = [
    "ClientEvents",
    "Committed",
    "Release",
    "RoundCommitter",
    "ServerModel",
    "TorchServerModel",
    "seal_round",
    "server_step",
    "server_update",
    "weighted_mean_update",
]


def weighted_mean_update(total: NDArray[np.float64], survivors: Sequence[int],
                         public_weight: Sequence[float], weight_total: float | None = None
                         ) -> NDArray[np.float64]:
    """FedAvg: each survivor sent w_i * update_i (w_i = n_i / max n, public); the weighted mean is
    the released sum divided by the survivors' total weight: ``weight_total`` when the aggregation
    released it beside the sum (ckks), else the survivors' public weights summed (in
    ``survivors``' order)."""
    if weight_total is not None:
        return total / weight_total
    return total / sum(public_weight[s] for s in survivors)


def server_step(server_opt: Any, weights: NDArray[np.float64], mean_update: NDArray[np.float64]
                ) -> NDArray[np.float64]:
    """The new global weights: the server optimizer applied to the FedAvg mean update, rounded to
    float32 because that is what the checkpoint holds, so a resumed run, a deployment and a
    simulation all continue bit for bit from the same state."""
    new = server_opt.step(weights, mean_update)
    out: NDArray[np.float64] = np.asarray(new, dtype=np.float32).astype(np.float64)
    return out


def server_update(server_opt: Any, weights: NDArray[np.float64], total: NDArray[np.float64],
                  survivors: Sequence[int], public_weight: Sequence[float],
                  weight_total: float | None = None) -> NDArray[np.float64]:
    """:func:`server_step` on the FedAvg mean of the released sum (:func:`weighted_mean_update`)."""
    return server_step(server_opt, weights,
                       weighted_mean_update(total, survivors, public_weight, weight_total))


def seal_round(ledger: Ledger, drafts: Sequence[Draft]) -> list[bytes]:
    """Chain one round's ledger drafts and return their canonical lines for the round's commit. If
    the commit then fails the run stops, so memory never outlives the disk."""
    from securefl.dp.ledger import canonical_bytes

    entries = ledger.record(list(drafts))
    return [canonical_bytes(e) for e in entries]


@dataclass(frozen=True)
class ClientEvents:
    """How a run's client-level DP events enter the ledger: the clip C, ``sampling`` ("all", or
    "fixed_size" with client sampling: no amplification is claimed either way) and
    ``noise_source`` (where the banks' noise shares came from: "os_csprng" in a deployment,
    "seeded_chacha20" in a seeded simulation)."""

    clip_norm: float
    sampling: Sampling = "all"
    noise_source: NoiseSource = "os_csprng"

    def draft(self, round_: int, participants: int, survivors: int, event: Event,
              colluders: int) -> Draft:
        """The federation's client-level ledger draft of one round (or of a planned round)."""
        from securefl.dp.ledger import Draft

        return Draft(round=round_, level="client", party="federation", event=event,
                     clip_norm=self.clip_norm, participants=participants, survivors=survivors,
                     neighbouring="add_remove", sampling=self.sampling, steps=1,
                     colluders=colluders, noise_source=self.noise_source)

    def released(self, round_: int, participants: int, noise: NoisePlan, survivors: int,
                 *, encoding: Encoding | None, dim: int) -> Draft:
        """The client-level mechanism a round actually released (its survivors, not the plan), as
        the server and the assumed colluders see it (securefl.dp.fedavg.client_round_event)."""
        from securefl.dp.fedavg import client_round_event

        event = client_round_event(noise, survivors, encoding=encoding, dim=dim)
        return self.draft(round_, participants, survivors, event, noise.colluders)


@dataclass(frozen=True)
class Release:
    """The typed outcome of a completed round: the only thing it released, the sum of the
    survivors' (clipped, weighted, noised) updates, and the facts its record and ledger need.
    Parties are named as the run directory names them (bank names)."""

    total: NDArray[np.float64]
    #: the banks in the sum, in the order their weights are summed
    survivors: tuple[str, ...]
    #: the survivors' public FedAvg weights n_i / max n, in ``survivors``' order
    survivor_weights: tuple[float, ...]
    #: every participant that dropped, with its stage (one that dropped after its input was in
    #: the sum is still a survivor; the record lists only the others)
    dropouts: Mapping[str, str] = field(default_factory=dict)
    aggregate_digest: str | None = None
    #: sha256 hex of each survivor's input as the server received it (masked or encrypted)
    input_digests: Mapping[str, str] = field(default_factory=dict)
    #: ckks: the released sum of the survivors' weights (encrypted beside the update)
    weight_total: float | None = None
    #: secagg: the round's encoding (the ledger's distributed discrete Gaussian event needs it)
    encoding: Encoding | None = None

    def __post_init__(self) -> None:
        from securefl.errors import ConfigError

        if len(self.survivor_weights) != len(self.survivors) or not self.survivors:
            raise ConfigError("a release needs one public weight per survivor")

    @classmethod
    def of(cls, total: NDArray[np.float64], survivors: Sequence[int],
           names: Mapping[int, str] | Sequence[str], weights: Mapping[str, float], *,
           dropouts: Mapping[int, str] | None = None,
           input_digests: Mapping[int, str] | None = None, aggregate_digest: str | None = None,
           weight_total: float | None = None, encoding: Encoding | None = None) -> Release:
        """The release of a protocol run that names parties by client id (the SecAgg and CKKS
        machines, the in-process drivers): ``names`` maps ids to the run directory's bank names,
        ``weights`` gives each bank's public FedAvg weight. Every driver builds its release
        here, so the id-to-name rules are written once."""
        who = tuple(names[i] for i in survivors)
        return cls(total=total, survivors=who, survivor_weights=tuple(weights[n] for n in who),
                   dropouts={names[i]: st for i, st in (dropouts or {}).items()},
                   aggregate_digest=aggregate_digest,
                   input_digests={names[i]: h for i, h in (input_digests or {}).items()},
                   weight_total=weight_total, encoding=encoding)

    def mean_update(self) -> NDArray[np.float64]:
        """The FedAvg mean update (:func:`weighted_mean_update`)."""
        return weighted_mean_update(self.total, range(len(self.survivors)),
                                    self.survivor_weights, self.weight_total)


class ServerModel(Protocol):
    """The global model as the server holds it."""

    def step(self, mean_update: NDArray[np.float64]) -> None:
        """Move the global model by the round's FedAvg mean update (the server optimizer)."""

    def checkpoint(self) -> bytes:
        """The bytes the run directory stores for the current global model (safetensors)."""


class TorchServerModel:
    """securefl's server side of a torch model: the flat global weights, the server optimizer
    (FedAvg, FedAdam, FedProx; securefl.fl.server_opt) and the model they are loaded into."""

    def __init__(self, model: Any, server_opt: Any) -> None:
        from securefl.fl.params import get_flat

        self.model = model
        self.server_opt = server_opt
        self.weights: NDArray[np.float64] = get_flat(model)

    def restore(self, model_bytes: bytes) -> None:
        """Load a committed checkpoint: the model's tensors and the optimizer's state."""
        import torch

        from securefl.fl.params import from_bytes, get_flat

        tensors = from_bytes(model_bytes)
        self.server_opt.load_state({k: v.astype(np.float64) for k, v in tensors.items()
                                    if k.startswith("server_opt.")})
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()
                                    if not k.startswith("server_opt.")})
        self.weights = get_flat(self.model)

    def reset(self) -> None:
        """Load the global weights back into the model (local training works on the same
        object)."""
        from securefl.fl.params import set_flat

        set_flat(self.model, self.weights)

    def step(self, mean_update: NDArray[np.float64]) -> None:
        self.weights = server_step(self.server_opt, self.weights, mean_update)
        self.reset()

    def checkpoint(self) -> bytes:
        from securefl.fl.params import model_tensors, to_bytes

        self.reset()
        return to_bytes({**model_tensors(self.model), **self.server_opt.state()})


@dataclass(frozen=True)
class Committed:
    """What one committed round recorded (the round report's facts)."""

    round: int
    participants: tuple[str, ...]
    survivors: tuple[str, ...]
    dropouts: dict[str, str]
    metrics: dict[str, float]
    #: the error of an aborted round (nothing released, the model unchanged); None if released
    error: Any = None


class RoundCommitter:
    """Commits each round of one run directory: ``store`` (the audit log), ``ledger`` (the
    privacy ledger, already holding the committed rounds' entries), ``model`` (how the global
    model moves), ``events`` (how client-level events are ledgered; None: the run adds no
    client-level noise)."""

    def __init__(self, store: RunStore, ledger: Ledger, model: ServerModel, *, session_id: bytes,
                 aggregation: str, events: ClientEvents | None) -> None:
        self.store = store
        self.ledger = ledger
        self.model = model
        self.session_id = session_id
        self.aggregation = aggregation
        self.events = events

    def _record(self, participants: Sequence[str]) -> dict[str, Any]:
        return {"session_id": self.session_id.hex(), "aggregation": self.aggregation,
                "participants": list(participants)}

    def commit(self, round_: int, participants: Sequence[str], release: Release, *,
               drafts: Sequence[Draft] = (), noise: NoisePlan | None = None, dim: int,
               evaluate: Callable[[], Mapping[str, float]] = dict) -> Committed:
        """A released round: the client-level event of its survivors (with ``noise``, the round's
        plan), the server update, the new model's ``evaluate()`` metrics, the audit record and
        ``drafts`` (the banks' record-level events) plus that event in the ledger, one commit."""
        drafts = list(drafts)
        if noise is not None and noise.noise_multiplier > 0:
            if self.events is None:
                from securefl.errors import ConfigError

                raise ConfigError("a round with client-level noise needs ClientEvents")
            drafts.append(self.events.released(round_, len(participants), noise,
                                               len(release.survivors),
                                               encoding=release.encoding, dim=dim))
        self.model.step(release.mean_update())
        metrics = dict(evaluate())
        record = self._record(participants)
        dropouts = {n: st for n, st in release.dropouts.items() if n not in release.survivors}
        record.update(survivors=list(release.survivors), dropouts=dropouts,
                      aggregate_digest=release.aggregate_digest)
        if release.input_digests:
            record["input_digests"] = dict(release.input_digests)
        self.store.commit_round(round_=round_, record_fields=record,
                                model=self.model.checkpoint(),
                                ledger_lines=seal_round(self.ledger, drafts), metrics=metrics)
        return Committed(round_, tuple(participants), release.survivors, dropouts, metrics)

    def abort(self, round_: int, participants: Sequence[str], error: Any, *,
              alive: Sequence[str], dropouts: Mapping[str, str] | None = None,
              drafts: Sequence[Draft] = (), metrics: Mapping[str, float] | None = None
              ) -> Committed:
        """An aborted round (``error``, a SecureFLError): nothing released, the model unchanged,
        recorded as aborted with the banks still ``alive`` and ``drafts`` (what the banks that
        trained spent) in the ledger; ``metrics`` are the model's last ones."""
        record = self._record(participants)
        record.update(survivors=list(alive), status="aborted", error_code=error.code,
                      dropouts=dict(dropouts or {}))
        kept = dict(metrics or {})
        self.store.commit_round(round_=round_, record_fields=record,
                                model=self.model.checkpoint(),
                                ledger_lines=seal_round(self.ledger, drafts), metrics=kept)
        return Committed(round_, tuple(participants), tuple(alive), dict(dropouts or {}), kept,
                         error=error)
