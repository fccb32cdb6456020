"""CUDA against the CPU: the same curvature checkpoints on both devices, compared and timed.

For MLPs and CNNs on MNIST-1D (the Hessian of the mean loss over the whole 4,000-example training set, as
sane-run takes it by default) at a seeded initialisation:

  agreement   exact (float64) and Lanczos top-10 (float64) spectra on CUDA against the CPU, for an MLP (depth 3
              width 24) and a CNN (depth 3, 8 channels, max pooling: the layer-structured CNN build): the
              largest eigenvalue difference relative to |lambda|_max, and N_eff, SANE and the trace side by side
  timing      one curvature checkpoint as `sane-run` takes it: an MLP of depth 8 width 24 (exact, 4,834
              parameters) and a CNN of depth 3 with 24 channels (exact, 4,810 parameters), the pair the CNN
              build's speed is judged by, and an MLP of depth 16 width 128 (auto -> SLQ in float32, 237,706
              parameters), on each device (CUDA timed after a warm-up, synchronised)

Exits 1 when a difference exceeds its tolerance (1e-9 relative for exact, 1e-6 for Lanczos). Without a GPU
it compares the CPU with itself, which only checks that the script runs.

Run:  python benchmarks/gpu_check.py [--devices cpu,cuda]   (or bash benchmarks/gpu_check.sh)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from common import mnist1d_subset

from sane_cli.losses import loss_function
from sane_cli.methods import measure
from sane_cli.models import CNN, MLP


def hessian_config(**overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        cfg = compose("config", overrides=[f"hessian.{k}={v}" for k, v in overrides.items()])
    return cfg.hessian


def net(kind: str, depth: int, width: int) -> torch.nn.Module:
    """A seeded MLP (width: hidden units) or CNN (width: channels; kernel 3, max pooling) on MNIST-1D."""
    torch.manual_seed(0)
    return CNN((40,), 10, depth=depth, channels=width) if kind == "cnn" else MLP(40, 10, depth, width)


def checkpoint(kind: str, depth: int, width: int, device: str, hcfg, x, y):
    """(result, seconds) of one curvature checkpoint of a seeded net on ``device``."""
    model = net(kind, depth, width).to(device)
    xd, yd = x.to(device), y.to(device)
    if device == "cuda":
        measure(model, loss_function("cross_entropy", 10), xd, yd, hcfg)  # warm-up
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = measure(model, loss_function("cross_entropy", 10), xd, yd, hcfg)
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


AGREEMENT = [("mlp", 3, 24), ("cnn", 3, 8)]  # (model, depth, width or channels)
CHECKPOINTS = [("mlp", 8, 24, "exact"), ("cnn", 3, 24, "exact"), ("mlp", 16, 128, "auto")]


def pair(a: float, b: float) -> str:
    return "-" if np.isnan(a) and np.isnan(b) else f"{a:.10g} | {b:.10g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu,cpu")
    args = parser.parse_args()
    base, other = args.devices.split(",")
    x, y = mnist1d_subset(4000)
    ok = True

    print(f"agreement, {other} against {base} (float64, 4,000 examples)")
    keys = ("lambda_max", "n_eff", "sane", "trace")
    heads = "".join(f"  {k + f' ({base} | {other})':>31}" for k in keys)
    print(f"{'net':<14}{'method':<9}{'max|dl|/|l|max':>15}{heads}")
    for kind, depth, width in AGREEMENT:
        for method, topk, tol in (("exact", 10, 1e-9), ("lanczos", 10, 1e-6)):
            hcfg = hessian_config(method=method, topk=topk, dtype="float64", tol=1e-10)
            a, _ = checkpoint(kind, depth, width, base, hcfg, x, y)
            b, _ = checkpoint(kind, depth, width, other, hcfg, x, y)
            n = min(len(a.eigenvalues), len(b.eigenvalues), 10 if method == "lanczos" else len(a.eigenvalues))
            diff = np.max(np.abs(a.eigenvalues[:n] - b.eigenvalues[:n])) / np.max(np.abs(a.eigenvalues))
            ok &= bool(diff <= tol)
            cells = "".join(f"  {pair(a.row[k], b.row[k]):>31}" for k in keys)
            label = f"{kind} {depth}x{width}"
            print(f"{label:<14}{method:<9}{diff:>15.2e}{cells}  {'ok' if diff <= tol else f'ABOVE {tol:g}'}")

    print("\none curvature checkpoint, seconds (4,000 examples)")
    print(f"{'net':<40}{'method':<16}{base:>10}{other:>10}{'ratio':>10}")
    for kind, depth, width, method in CHECKPOINTS:
        hcfg = hessian_config(method=method)
        a, ta = checkpoint(kind, depth, width, base, hcfg, x, y)
        _, tb = checkpoint(kind, depth, width, other, hcfg, x, y)
        params = sum(p.numel() for p in net(kind, depth, width).parameters())
        size = f"{width} channels" if kind == "cnn" else f"width {width}"
        label = f"{kind} depth {depth} {size} ({params:,})"
        print(f"{label:<40}{a.method + ' ' + a.dtype:<16}{ta:>10.2f}{tb:>10.2f}{ta / tb:>9.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
