"""SecAgg thresholds and SecAgg+ graph degree derived from the federation's stated assumptions.

Adversary (protocols/secagg/spec.md, "Threat model and bounds"): a malicious server that may drop,
delay, reorder, forge or tailor messages per client, colluding with up to ``c`` enrolled banks
fixed before the round's public randomness is drawn (static corruption). n participants.

1. **One survivor set.** Every honest client signs one survivor set U3 per round and reveals
   shares only after verifying >= T valid signatures on *its* U3 from members of U3. Two different
   sets each reaching T signatures need 2(T - c) <= n - c honest signers, so requiring
   ``2T > n + c`` leaves at most one U3 that any honest client acts on (the counting argument
   behind the active-security threshold of Bonawitz et al., CCS 2017, section 6 and appendix).
   With one U3 an honest holder reveals, for each peer, either its self-mask share (peer in U3)
   or its mask-key share (peer dropped), never both.
2. **No lone honest input.** T - c >= 2: any released sum holds at least two honest inputs.
3. **Secrets stay shared.** A secret (self-mask seed, mask key) of an honest client is revealed
   only if t of its holders reveal it; honest holders reveal only one kind (1.), so the colluding
   holders must number < t. Classic SecAgg: holders are all n clients, t > c. SecAgg+: an honest
   client's colluding neighbours ~ Binomial(c, p); union bound over n clients:
   ``n * P[Bin(c, p) >= t] <= 2^-(sigma + 1)``.
4. **Only large sums (alpha-summation, Bell et al., CCS 2020).** With one U3, the client-side
   check "every neighbour in U3 is a peer I masked with", and every member of U3 having signed U3
   (an honest client reveals nothing otherwise, so a victim whose check failed cannot be left in
   the sum), the server can subtract a pairwise mask only when one end is a colluder or dropped,
   so what it learns is the sum over each connected component of the graph induced on the honest
   members of U3. It may remove (declare dropped, or
   corrupt) at most ``R = n - T + c`` clients. A set S of honest survivors is isolated only if its
   whole outer boundary N(S) \\ S lies in the removed set, so with each edge independently present
   with probability p (G(n, p), spec "Graph"):
   ``P[some S with |S| < s_min is isolable] <= sum_{s=1}^{s_min - 1} C(n, s)
   * P[Bin(n - s, 1 - (1 - p)^s) <= R] <= 2^-(sigma + 1)``.
   The complete graph (classic SecAgg) isolates nothing smaller than all honest survivors,
   ``T - c``. The union bound (ours, in the style of Bell et al.'s analysis; it counts every set,
   connected or not) is checked independently by exhaustive search over the server's choices for
   small n (tests/test_secagg_adversary.py).

Defaults: ``colluders = 0`` (a lone malicious server, the guarantee securefl exists for);
``dropout_fraction = None`` (tolerate as many dropouts as bound 1 allows: T = floor((n + c) / 2) + 1,
at least c + 2); ``security_bits = 40``; ``alpha = 0.5`` (SecAgg+ is used only where a graph of
degree < 0.8 (n - 1) guarantees that every released sum holds at least half the honest survivors;
otherwise the complete graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigError

__all__ = [
    "Assumptions",
    "Derived",
    "colluder_log2",
    "default_threshold",
    "derive",
    "isolation_log2",
    "min_threshold",
    "table",
    "threshold_for",
]

#: SecAgg+ is used only when it needs fewer than this fraction of the n - 1 possible neighbours.
GRAPH_MAX_FRACTION = 0.8


@dataclass(frozen=True)
class Assumptions:
    """What the federation manifest states (signed by every member)."""

    #: banks that may collude with the server (static corruption)
    colluders: int = 0
    #: fraction of participants whose dropping a round must survive; None = the most bound 1 allows
    dropout_fraction: float | None = None
    #: graph-based guarantees fail with probability at most 2^-security_bits over ``graphs``
    #: graphs together (one round attempt when graphs = 1)
    security_bits: int = 40
    #: SecAgg+ target: every released sum holds >= ceil(alpha * (T - c)) honest inputs
    alpha: float = 0.5
    #: how many graphs the 2^-security_bits must cover together (a union bound): each graph's
    #: bounds 3 and 4 must hold with probability 2^-(security_bits + log2(graphs)). A deployment
    #: manifest sets it to every graph of its life (ProtocolParams.lifetime_graphs)
    graphs: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.colluders < 2**31:
            raise ConfigError("colluders must be >= 0")
        if self.dropout_fraction is not None and not 0 <= self.dropout_fraction < 1:
            raise ConfigError("dropout_fraction must be in [0, 1)")
        if not 16 <= self.security_bits <= 128:
            raise ConfigError("security_bits must be in [16, 128]")
        if not 0 < self.alpha <= 1:
            raise ConfigError("alpha must be in (0, 1]")
        if not 1 <= self.graphs <= 2**64:
            raise ConfigError("graphs must be in [1, 2^64]")

    @property
    def graph_bits(self) -> float:
        """The per-graph security: sigma' = security_bits + log2(graphs), so the union bound
        over ``graphs`` graphs fails with probability <= 2^-security_bits."""
        return self.security_bits + math.log2(self.graphs)


@dataclass(frozen=True)
class Derived:
    """Round parameters for n participants and what they guarantee."""

    n: int
    threshold: int  # T: survivors and consistency signatures needed
    degree: int  # k: expected neighbours (n - 1 = classic, complete graph)
    neighbour_threshold: int  # t: Shamir threshold among a client's holders
    min_honest_sum: int  # no released sum holds fewer honest inputs (w.p. >= 1 - 2^-sigma)
    log2_failure: float  # log2 of the probability that the graph bounds fail (-inf: classic)

    @property
    def classic(self) -> bool:
        return self.degree == self.n - 1

    @property
    def dropouts_tolerated(self) -> int:
        return self.n - self.threshold

    @property
    def alpha(self) -> float:
        return self.min_honest_sum / self.n


def min_threshold(n: int, colluders: int) -> int:
    """The smallest T with 2T > n + c (bound 1) and T - c >= 2 (bound 2)."""
    return max((n + colluders) // 2 + 1, colluders + 2)


def default_threshold(n: int, colluders: int = 0) -> int:
    """The smallest threshold the active-security bounds allow for n participants and c
    colluders (:func:`min_threshold`), capped at n: a run's default when none is given."""
    return min(n, min_threshold(n, colluders))


def threshold_for(n: int, a: Assumptions) -> int:
    """The threshold the stated assumptions give n participants (what :func:`derive` uses when
    none is given): the smallest T of bounds 1 and 2, or with a stated dropout fraction f,
    n - floor(f n) (then checked against the bounds by :func:`derive`)."""
    if a.dropout_fraction is None:
        return min_threshold(n, a.colluders)
    return n - math.floor(a.dropout_fraction * n)


def check_threshold(n: int, threshold: int, a: Assumptions) -> None:
    """Refuse a T below bounds 1 and 2, naming them."""
    c = a.colluders
    if not 1 <= threshold <= n:
        raise ConfigError(f"threshold T = {threshold} must be in [1, n = {n}]")
    if 2 * threshold <= n + c:
        raise ConfigError(
            f"threshold T = {threshold} is below the active-security bound 2T > n + c "
            f"(n = {n}, c = {c} colluding banks; Bonawitz et al. CCS 2017): T >= "
            f"{(n + c) // 2 + 1} is needed, else a split view can unmask an honest input",
            hint="raise the threshold, or state fewer colluders / dropouts in the manifest",
        )
    if threshold - c < 2:
        raise ConfigError(
            f"threshold T = {threshold} with c = {c} colluding banks lets a sum hold a single "
            f"honest input: T - c >= 2 is needed (T >= {c + 2})",
            hint="with this many colluders the federation needs more banks",
        )


# --- probability bounds (log2) ---------------------------------------------------------------------
def _log_fact(n: int) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def _logsumexp(v: np.ndarray) -> float:
    if v.size == 0:
        return -math.inf
    m = float(np.max(v))
    if m == -math.inf:
        return -math.inf
    return m + math.log(float(np.sum(np.exp(v - m))))


def _edge_probability(n: int, k: int) -> float:
    """The exact edge probability of :func:`securefl.protocol.graph.random_graph`."""
    return ((k << 64) // (n - 1)) / 2.0**64


def isolation_log2(n: int, k: int, removed: int, s_min: int) -> float:
    """log2 of the union bound (bound 4) that some honest set smaller than ``s_min`` can be cut off
    by removing ``removed`` clients from G(n, p)."""
    if k >= n - 1:
        return -math.inf
    p = _edge_probability(n, k)
    lf = _log_fact(n)
    log1mp = math.log1p(-p)
    total: list[float] = []
    for s in range(1, s_min):
        m = n - s
        r = min(removed, m)
        log_miss = s * log1mp  # log (1 - q), q = P[an outside node touches S]
        log_q = math.log(-math.expm1(log_miss))
        j = np.arange(r + 1, dtype=np.int64)
        terms = lf[m] - lf[j] - lf[m - j] + j * log_q + (m - j) * log_miss
        total.append(lf[n] - lf[s] - lf[n - s] + _logsumexp(terms))
    return _logsumexp(np.array(total)) / math.log(2) if total else -math.inf


def colluder_log2(n: int, k: int, colluders: int, t: int) -> float:
    """log2 of n * P[Bin(c, p) >= t] (bound 3): some honest client has t colluding neighbours."""
    c = colluders
    if t > c:
        return -math.inf
    p = _edge_probability(n, k) if k < n - 1 else 1.0
    if p >= 1.0:
        return 0.0
    lf = _log_fact(c)
    j = np.arange(t, c + 1, dtype=np.int64)
    terms = lf[c] - lf[j] - lf[c - j] + j * math.log(p) + (c - j) * math.log1p(-p)
    return (math.log(n) + _logsumexp(terms)) / math.log(2)


def _graph_t(n: int, k: int, a: Assumptions) -> int:
    t = 2
    while colluder_log2(n, k, a.colluders, t) > -(a.graph_bits + 1):
        t += 1
    return t


def _graph_ok(n: int, k: int, removed: int, s_min: int, a: Assumptions) -> bool:
    return isolation_log2(n, k, removed, s_min) <= -(a.graph_bits + 1)


def derive(n: int, a: Assumptions, *, threshold: int | None = None,
           degree: int | None = None, neighbour_threshold: int | None = None) -> Derived:
    """Parameters for n participants; explicit values are checked against the bounds (ConfigError
    naming the bound when below it)."""
    if n < 2:
        raise ConfigError("SecAgg needs at least 2 participants")
    c = a.colluders
    T = threshold_for(n, a) if threshold is None else threshold
    check_threshold(n, T, a)
    honest = T - c
    removed = n - T + c
    target = max(2, math.ceil(a.alpha * honest))
    if degree is None:
        k = n - 1
        limit = math.floor(GRAPH_MAX_FRACTION * (n - 1))
        if limit >= 2 and _graph_ok(n, limit, removed, target, a):
            lo, hi = 2, limit  # the bound is monotone in k: binary search for the smallest k
            while lo < hi:
                mid = (lo + hi) // 2
                if _graph_ok(n, mid, removed, target, a):
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
    else:
        k = degree
        if not 1 <= k <= n - 1:
            raise ConfigError(f"degree k = {k} must be in [1, n - 1 = {n - 1}]")
    if k == n - 1:
        t_min, s_min, fail = c + 1, honest, -math.inf
        t_default = T
    else:
        fail = isolation_log2(n, k, removed, target)
        if fail > -(a.graph_bits + 1):
            raise ConfigError(
                f"SecAgg+ degree k = {k} is below the alpha-summation bound for n = {n}, T = {T}, "
                f"c = {c}: a server removing {removed} clients could isolate fewer than {target} "
                f"honest inputs with probability 2^{fail:.1f} > 2^-{a.graph_bits + 1:.1f} "
                f"(per graph, over {a.graphs} graphs)",
                hint="omit the degree to derive it, or use classic SecAgg (k = n - 1)",
            )
        s_min = target
        t_min = _graph_t(n, k, a)
        t_default = t_min
        fail = max(fail, colluder_log2(n, k, c, t_min))
    t = t_default if neighbour_threshold is None else neighbour_threshold
    if t < t_min:
        raise ConfigError(
            f"neighbour threshold t = {t} is below the bound t >= {t_min} (c = {c} colluding "
            f"banks could hold t shares of an honest client's secret)")
    if t > min(T, k + 1):
        raise ConfigError(f"neighbour threshold t = {t} exceeds min(T, k + 1) = {min(T, k + 1)}")
    return Derived(n=n, threshold=T, degree=k, neighbour_threshold=t, min_honest_sum=s_min,
                   log2_failure=fail)


def table(ns: tuple[int, ...] = (3, 5, 10, 30, 100, 1000),
          assumptions: tuple[Assumptions, ...] = (
              Assumptions(), Assumptions(dropout_fraction=0.1),
              Assumptions(colluders=1, dropout_fraction=0.1),
              Assumptions(colluders=1), Assumptions(colluders=3, dropout_fraction=0.1)),
          ) -> list[dict[str, object]]:
    """The spec's table: n x assumptions -> T, k, t, min honest sum, alpha, dropouts tolerated
    (rows that the bounds refuse say why)."""
    rows: list[dict[str, object]] = []
    for a in assumptions:
        for n in ns:
            row: dict[str, object] = {"n": n, "c": a.colluders,
                                      "dropout_fraction": a.dropout_fraction}
            try:
                d = derive(n, a)
            except ConfigError as exc:
                row["refused"] = str(exc).split(":")[0]
            else:
                row.update(T=d.threshold, k=d.degree, t=d.neighbour_threshold,
                           graph="classic" if d.classic else "G(n,p)",
                           min_honest_sum=d.min_honest_sum, alpha=round(d.alpha, 3),
                           dropouts=d.dropouts_tolerated,
                           log2_failure=None if d.classic else round(d.log2_failure, 1))
            rows.append(row)
    return rows
