"""Deterministic partitioners: a stratified test split, then the rest into N banks.

Everything here is data splitting for simulation, not cryptography: randomness comes from an
explicitly seeded ``numpy.random.Generator`` passed in by the caller, so equal seeds give equal
splits.

- :func:`stratified_split` holds out a fraction of every stratum (label class or target bin).
- :func:`natural_groups` assigns each row to a bank by the value of one column (a named rule, one
  bank per distinct value, or contiguous value ranges of about equal size).
- :func:`iid_partition` deals every stratum round-robin over the banks (equal size and label mix).
- :func:`dirichlet_partition` gives each bank a Dirichlet(alpha) share of every stratum (label skew;
  Hsu, Qi and Brown, "Measuring the effects of non-identical data distribution", 2019).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import DataError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "NaturalRule",
    "dirichlet_partition",
    "iid_partition",
    "natural_groups",
    "quantile_strata",
    "stratified_split",
]


def quantile_strata(y: NDArray[np.float64], bins: int = 5) -> NDArray[np.int64]:
    """Bin index 0..bins-1 of each value by the quantiles of ``y`` (strata of a regression
    target)."""
    edges = np.quantile(y, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, y, side="right").astype(np.int64)


def stratified_split(strata: NDArray[np.int64], fraction: float, rng: np.random.Generator,
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(kept, held-out) sorted row indices; each stratum contributes round(fraction * size) rows.

    A stratum with at least 2 rows gives at least 1 row to each side when 0 < fraction < 1.
    """
    held: list[NDArray[np.int64]] = []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        k = round(fraction * idx.size)
        if 0 < fraction < 1 and idx.size >= 2:
            k = min(max(k, 1), idx.size - 1)
        held.append(rng.permutation(idx)[:k])
    test = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    mask = np.ones(strata.size, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask).astype(np.int64), test.astype(np.int64)


def iid_partition(strata: NDArray[np.int64], banks: int, rng: np.random.Generator,
                  ) -> list[NDArray[np.int64]]:
    """Shuffle each stratum and deal its rows round-robin: sizes and label mixes differ by <= 1."""
    order = np.concatenate([rng.permutation(np.flatnonzero(strata == s))
                            for s in np.unique(strata)])
    owner = np.arange(order.size) % banks
    return [np.sort(order[owner == b]).astype(np.int64) for b in range(banks)]


def dirichlet_partition(strata: NDArray[np.int64], banks: int, alpha: float,
                        rng: np.random.Generator, *, min_per_stratum: int = 10,
                        ) -> list[NDArray[np.int64]]:
    """Label-skewed split: bank b gets a Dirichlet(alpha, ..., alpha) share of every stratum.

    Each bank first receives ``min_per_stratum`` rows of every stratum (so each bank sees every
    class), then the rest of the stratum is split by proportions drawn from Dirichlet(alpha 1_N).
    Smaller alpha means stronger skew.
    """
    if not alpha > 0:
        raise DataError(f"alpha must be > 0, got {alpha}")
    parts: list[list[NDArray[np.int64]]] = [[] for _ in range(banks)]
    for s in np.unique(strata):
        idx = rng.permutation(np.flatnonzero(strata == s))
        if idx.size < banks * min_per_stratum:
            raise DataError(
                f"stratum {int(s)} has {idx.size} rows, too few to give each of {banks} banks "
                f"{min_per_stratum}", hint="use fewer banks or --partition iid")
        reserved, rest = idx[:banks * min_per_stratum], idx[banks * min_per_stratum:]
        share = rng.dirichlet(np.full(banks, alpha))
        counts = rng.multinomial(rest.size, share)
        cuts = np.cumsum(counts)[:-1]
        for b, chunk in enumerate(np.split(rest, cuts)):
            parts[b].append(reserved[b * min_per_stratum:(b + 1) * min_per_stratum])
            parts[b].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


@dataclass(frozen=True)
class NaturalRule:
    """A named natural split: ``groups[b]`` is the set of values of ``column`` that form bank b
    (``edges`` instead: bank b holds values in [edges[b-1], edges[b]))."""

    column: str
    names: tuple[str, ...]
    groups: tuple[tuple[float, ...], ...] = ()
    edges: tuple[float, ...] = ()

    def assign(self, values: NDArray[np.float64]) -> NDArray[np.int64]:
        if self.edges:
            return np.searchsorted(np.asarray(self.edges), values, side="right").astype(np.int64)
        out = np.full(values.size, -1, dtype=np.int64)
        for b, g in enumerate(self.groups):
            out[np.isin(values, np.asarray(g, dtype=np.float64))] = b
        if (out < 0).any():
            stray = np.unique(values[out < 0]).tolist()
            raise DataError(f"{self.column} values {stray} are in no bank of the rule")
        return out


def _slug(text: str) -> str:
    """Bank-name-safe text: the audit log, the ledger and the manifest accept [A-Za-z0-9_.-]."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace("=", "-")).strip("-")[:48]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def natural_groups(values: NDArray[np.float64], banks: int, *, column: str,
                   categories: Sequence[str] | None = None, rule: NaturalRule | None = None,
                   ) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    """(bank index of every row, bank names) for a split by the value of ``column``.

    With a ``rule``: the rule's groups or ranges. Otherwise, with exactly ``banks`` distinct
    values: one bank per value. With more values: a numeric column is cut at its quantiles q_b at
    levels b/N (b = 1..N-1) and bank b (from 0) holds the values in (q_b, q_{b+1}], with q_0 = -inf
    and q_N = +inf: the bins of ``pandas.qcut``, so tied values stay together. A categorical column
    (``categories`` given) is packed greedily, most frequent value first, into the bank with the
    fewest rows so far.
    """
    if rule is not None:
        return rule.assign(values), tuple(f"bank{b}-{_slug(n)}" for b, n in enumerate(rule.names))
    distinct, counts = np.unique(values, return_counts=True)
    k = distinct.size
    label = (lambda v: categories[int(v)]) if categories is not None else _fmt
    if k < banks:
        raise DataError(f"column {column!r} has {k} distinct values, fewer than {banks} banks",
                        hint="lower --banks, split by another column, or use --partition iid")
    group_of_value = np.empty(k, dtype=np.int64)
    if k == banks:
        group_of_value[:] = np.arange(k)
        names = [f"{column}={label(v)}" for v in distinct]
    elif categories is None:
        edges = np.quantile(values, np.arange(1, banks) / banks)
        group_of_value[:] = np.searchsorted(edges, distinct, side="left")
        names = []
        for b in range(banks):
            members = distinct[group_of_value == b]
            if members.size == 0:
                raise DataError(f"column {column!r} cannot be cut into {banks} ranges of similar "
                                "size (one value holds too many rows)",
                                hint="lower --banks or split by another column")
            names.append(f"{column}={_fmt(members[0])}..{_fmt(members[-1])}")
    else:
        sizes = np.zeros(banks, dtype=np.int64)
        for j in np.argsort(-counts, kind="stable"):
            b = int(np.argmin(sizes))
            group_of_value[j] = b
            sizes[b] += counts[j]
        names = [f"{column}-group{b}" for b in range(banks)]
    assign = group_of_value[np.searchsorted(distinct, values)]
    return assign, tuple(f"bank{b}-{_slug(n)}" for b, n in enumerate(names))
