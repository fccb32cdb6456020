"""Where a run computes: ``device=auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda``."""

from __future__ import annotations

from .errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str):
    """The torch device ``name`` means here: ``auto`` is CUDA when available, else the CPU; ``cuda`` without a
    GPU is a usage error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("device='cuda' is invalid: no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)
