"""Model parameters as flat float vectors and as deterministic, pickle-free bytes (safetensors)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from securefl.errors import IntegrityError

if TYPE_CHECKING:
    import torch
    from numpy.typing import NDArray

__all__ = ["from_bytes", "get_flat", "model_tensors", "set_flat", "sha256_hex", "to_bytes"]


def get_flat(model: torch.nn.Module) -> NDArray[np.float64]:
    """All parameters, in ``named_parameters`` order, as one float64 vector."""
    return np.concatenate(
        [p.detach().cpu().numpy().astype(np.float64).ravel() for p in model.parameters()]
    )


def set_flat(model: torch.nn.Module, flat: NDArray[np.float64]) -> None:
    """Load a flat vector produced by :func:`get_flat` back into ``model`` (float32)."""
    import torch

    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            chunk = flat[offset : offset + n]
            if chunk.size != n:
                raise IntegrityError("parameter vector is shorter than the model")
            p.copy_(torch.from_numpy(chunk.reshape(p.shape).astype(np.float32)))
            offset += n
    if offset != flat.size:
        raise IntegrityError("parameter vector is longer than the model")


def to_bytes(tensors: Mapping[str, NDArray[np.float32] | NDArray[np.float64]]) -> bytes:
    """safetensors bytes of named arrays; identical arrays give identical bytes."""
    from safetensors.numpy import save

    return bytes(save({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}))


def from_bytes(data: bytes) -> dict[str, NDArray[np.float32] | NDArray[np.float64]]:
    """Parse safetensors bytes (no pickle, no code execution)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except (SafetensorError, ValueError, KeyError) as exc:
        raise IntegrityError(f"model file is not valid safetensors: {exc}") from exc


def model_tensors(model: torch.nn.Module) -> dict[str, NDArray[np.float32]]:
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
