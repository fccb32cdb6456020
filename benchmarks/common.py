"""Helpers shared by the benchmark scripts: timing and the MNIST-1D Hessian subset."""

from __future__ import annotations

import time

import torch
from omegaconf import OmegaConf

from sane_cli.data import load_data


def best_time(fn, repeats: int = 1):
    """(result of the last call, fastest wall time in seconds over ``repeats`` calls)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def mnist1d_subset(size: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The default dataset's Hessian subset, as sane-run draws it."""
    spec = dict(name="mnist1d", n_train=4000, n_test=1000, per_class=None, data_seed=42, cache_dir=None)
    return load_data(OmegaConf.create(spec)).hessian_subset(size, seed=seed)
