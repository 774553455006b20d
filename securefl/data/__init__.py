"""Datasets for securefl: the embedded credit table, a user's CSV/Parquet, encoding, splits.

Start with :func:`build_federated_data`; docs/data.md explains every choice.
"""

from __future__ import annotations

from securefl.data.encoding import binary_labels, encode_features, infer_task
from securefl.data.federated import BankData, FederatedData, build_federated_data
from securefl.data.partition import (
    dirichlet_partition,
    iid_partition,
    natural_groups,
    stratified_split,
)
from securefl.data.standardize import Standardizer, TargetScaler, moments
from securefl.data.table import RawTable, load_embedded, load_table, open_embedded

__all__ = [
    "BankData",
    "FederatedData",
    "RawTable",
    "Standardizer",
    "TargetScaler",
    "binary_labels",
    "build_federated_data",
    "dirichlet_partition",
    "encode_features",
    "iid_partition",
    "infer_task",
    "load_embedded",
    "load_table",
    "moments",
    "natural_groups",
    "open_embedded",
    "stratified_split",
]
