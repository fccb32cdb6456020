"""Peak memory of each curvature computation, each in a fresh process, against a process that only
builds the same model and data (the difference is what the computation itself needed).

Model: MLP depth 8 width 128 on MNIST-1D (105,610 parameters), 256 examples, float64; exact against SLQ at
depth 8 width 32 (7,978 parameters); and how the memory of the Hessian-vector-product operator (ours, and
PyHessian's on one batch) grows with the number of examples: 256, 4,000 (the MNIST-1D training set) and
60,000 (the size of MNIST's; the 4,000 examples repeated 15 times, since memory depends on shapes only),
each building the operator and taking 3 single and 1 batched (8 vectors) products.

Run:  pip install -e ".[bench]" && python benchmarks/memory.py
"""

from __future__ import annotations

import multiprocessing as mp
import resource

import torch


def _job(name: str, depth: int, width: int, n: int, queue) -> None:
    from common import mnist1d_subset

    from sane_cli.models import MLP

    x, y = mnist1d_subset(min(n, 4000))
    x, y = x.repeat(-(-n // len(y)), 1)[:n], y.repeat(-(-n // len(y)))[:n]
    torch.manual_seed(0)
    model = MLP(40, 10, depth, width).double()
    x = x.double()
    loss_fn = torch.nn.CrossEntropyLoss()
    params = list(model.parameters())
    loss_fn(model(x[:256]), y[:256]).backward()  # every process pays for torch's autograd set-up before the start
    model.zero_grad()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if name == "ours lanczos top-10" or name == "ours hutchinson 100":
        from sane_cli.iterative import hutchinson, hvp_operator, lanczos

        matvec, p = hvp_operator(model, loss_fn, x, y)
        if "lanczos" in name:
            lanczos(matvec, p, 10, tol=1e-3)
        else:
            hutchinson(matvec, p, probes=100)
    elif name.startswith("PyHessian"):
        from pyhessian import hessian as PyHessian

        torch.set_default_dtype(torch.float64)
        h = PyHessian(model, loss_fn, data=(x, y), cuda=False)
        h.eigenvalues(top_n=10, tol=1e-6, maxIter=1000) if "top-10" in name else h.trace(maxIter=100, tol=float("-inf"))
    elif name == "curvlinops eigsh top-10":
        from curvlinops import HessianLinearOperator
        from scipy.sparse.linalg import eigsh

        op = HessianLinearOperator(model, loss_fn, params, [(x, y)], check_deterministic=False).to_scipy()
        eigsh(op, k=10, which="LA", tol=1e-3, return_eigenvectors=False)
    elif name == "ours HVP operator":
        from sane_cli.iterative import hvp_operator

        matvec, p = hvp_operator(model, loss_fn, x, y)
        for _ in range(3):
            matvec(torch.ones(1, p, dtype=torch.float64))
        matvec(torch.ones(8, p, dtype=torch.float64))
    elif name == "PyHessian HVP":
        from pyhessian import hessian as PyHessian
        from pyhessian.utils import hessian_vector_product

        torch.set_default_dtype(torch.float64)
        h = PyHessian(model, loss_fn, data=(x, y), cuda=False)
        for _ in range(3):
            hessian_vector_product(h.gradsH, h.params, [torch.ones_like(q) for q in h.params])
    elif name == "ours exact":
        from sane_cli.curvature import layer_hessian, spectrum

        spectrum(layer_hessian(model, loss_fn, x, y), 10)
    elif name == "ours slq":
        from sane_cli.iterative import hvp_operator, lanczos, slq

        matvec, p = hvp_operator(model, loss_fn, x, y)
        lanczos(matvec, p, 10, tol=1e-6)
        slq(matvec, p, probes=16, steps=80)
    end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((start, end))


def peak(name: str, depth: int, width: int, n: int = 256) -> float:
    """MiB above the process's peak before the computation (ru_maxrss is in KiB on Linux)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_job, args=(name, depth, width, n, queue))
    proc.start()
    start, end = queue.get()
    proc.join()
    return (end - start) / 1024


def main() -> None:
    print(f"{'computation':<28}{'params':>8}{'examples':>9}{'peak MiB':>10}")
    for name in ["ours HVP operator", "PyHessian HVP"]:
        for n in (256, 4000, 60000):
            print(f"{name:<28}{105610:>8}{n:>9}{peak(name, 8, 128, n):>10.0f}", flush=True)
    for name in ["ours lanczos top-10", "PyHessian top-10", "curvlinops eigsh top-10", "ours hutchinson 100",
                 "PyHessian trace 100"]:  # fmt: skip
        print(f"{name:<28}{105610:>8}{256:>9}{peak(name, 8, 128):>10.0f}", flush=True)
    for name in ["ours exact", "ours slq"]:
        print(f"{name:<28}{7978:>8}{256:>9}{peak(name, 8, 32):>10.0f}", flush=True)


if __name__ == "__main__":
    main()
