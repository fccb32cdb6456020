"""ResNet-20 on CIFAR-10-format data: sane-run's curvature against PyHessian and hessian-eigenthings, side by side.

The data are CIFAR-10's official python batches with random images, written by this script (offline), read by
sane-run's loader (`dataset=cifar10`); the model is sane-run's ResNet-20 (269,722 parameters) in eval mode, its
batch normalisation's running statistics from a few training-mode passes; float32 for every library (their
default), the same model, examples and loss.

  top-1, top-10   the largest eigenvalues: ours (sane_cli.iterative.lanczos, values_only, tol 1e-3: stopped on
                  the eigenvalue error bound), PyHessian's `eigenvalues` (power iteration with deflation, its
                  default tol 1e-3 and 1e-4), hessian-eigenthings' `lanczos` (which='LA', tol 1e-3, max_iter
                  chosen as ours took) and `deflated_power_iteration` (tol 1e-3); each checked against a tight
                  float64 Lanczos reference (relative error of the k-th eigenvalue at worst)
  trace           100 Rademacher probes each: ours (`hutchinson`), PyHessian's `trace`, eigenthings' `hutchinson`;
                  and ours as `hessian=lanczos` measures it: the top-10 Lanczos run (tol 1e-3) with its Krylov basis
                  kept, then `--deflated-probes` probes projected off it (Hutchinson deflated by the basis), timed
                  whole and set against the peers whose standard error is at least its own; and the trace alone
                  (`krylov_trace`: a basis of `--trace-steps` Lanczos steps, then the deflated probes). `--draws N`
                  repeats both deflated estimators on N - 1 other seeds (untimed) and takes the spread of their
                  estimates, not one draw's own standard error, as their accuracy
  density         SLQ with 4 probes x 80 Lanczos steps each: ours (`slq`, full reorthogonalisation, as
                  `hessian=slq` runs it), PyHessian's `density`, eigenthings' `spectral_density`

Run alone on the machine:  pip install -e ".[bench]" && python benchmarks/resnet.py [--n 64] [--skip top10]
"""

from __future__ import annotations

import argparse
import copy
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sane_cli.curvature import hvp_operator
from sane_cli.data import load_data
from sane_cli.iterative import hutchinson, krylov_trace, lanczos, slq
from sane_cli.models import ResNet


def write_cifar10(root: Path, per_batch: int, seed: int = 0) -> None:
    """CIFAR-10's official python batches, random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, per_batch).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="training images measured")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: top1, top10, trace, density")
    ap.add_argument("--deflated-probes", type=int, default=16, help="probes of ours' deflated trace")
    ap.add_argument("--trace-steps", type=int, default=10, help="Lanczos steps of ours' trace alone")
    ap.add_argument("--draws", type=int, default=1, help="seeds of the deflated traces (their spread: accuracy)")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    root = Path(tempfile.mkdtemp())
    write_cifar10(root, per_batch=max(1, args.n // 5 + 1))
    spec = dict(name="cifar10", root=str(root), download=False, mirror=None, n_train=args.n, n_test=1,
                per_class=None, label_noise=0.0, label_noise_seed=0)  # fmt: skip
    data = load_data(OmegaConf.create(spec))
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    model = ResNet((3, 32, 32), 10, depth=20)
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their start
            model(x)
    model.eval()
    loss_fn = torch.nn.CrossEntropyLoss()
    p = sum(q.numel() for q in model.parameters())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ResNet-20 ({p:,} parameters), {len(y)} "
          "CIFAR-10-format images, eval mode, float32\n")  # fmt: skip
    matvec, _ = hvp_operator(model, loss_fn, x, y, dtype=torch.float32)

    gradient = lambda: torch.autograd.grad(loss_fn(model(x), y), list(model.parameters()))  # noqa: E731
    gradient()
    _, t_grad = timed(gradient)
    v = torch.randn(1, p)
    matvec(v)
    _, t_hvp = timed(lambda: matvec(v))
    print(f"gradient {t_grad:.2f} s; one Hessian-vector product (ours) {t_hvp:.2f} s = {t_hvp / t_grad:.2f} gradients")

    from hessian_eigenthings import HessianOperator, deflated_power_iteration, spectral_density, supervised_loss
    from hessian_eigenthings import hutchinson as et_hutchinson
    from hessian_eigenthings import lanczos as et_lanczos
    from pyhessian import hessian as PyHessian

    ph = PyHessian(copy.deepcopy(model), loss_fn, data=(x, y), cuda=False)
    et_op = HessianOperator(copy.deepcopy(model), [(x, y)], supervised_loss(loss_fn))

    ref = None
    if not {"top1", "top10"} <= skip:
        matvec64, _ = hvp_operator(model, loss_fn, x, y, dtype=torch.float64)
        ref, t_ref = timed(lambda: lanczos(matvec64, p, 10, tol=1e-8, max_iter=400, seed=1, values_only=True))
        print(f"reference: float64 Lanczos to 1e-8, {ref.iterations} steps, {t_ref:.0f} s; top-10 "
              f"{np.array2string(ref.values, precision=4)}\n")  # fmt: skip

    def error(values, k: int) -> float:
        got = np.sort(np.asarray(values, dtype=float))[::-1][:k]
        return float(np.max(np.abs(got - ref.values[:k]) / np.abs(ref.values[:k])))

    print(f"{'':<44}{'seconds':>9}{'rel. error':>12}{'HVPs':>7}")
    for k in (1, 10):
        if f"top{k}" in skip:
            continue
        ours, t_ours = timed(
            lambda k=k: lanczos(matvec, p, k, tol=1e-3, max_iter=400, seed=0, values_only=True, dtype=torch.float32)
        )
        print(f"top-{k:<3} ours (Lanczos, tol 1e-3){'':<15}{t_ours:>9.1f}{error(ours.values, k):>12.1e}"
              f"{ours.iterations:>7}")  # fmt: skip
        rows = {}  # each peer's (seconds, error)
        for tol in (1e-3, 1e-4):
            torch.manual_seed(0)
            (values, _), t = timed(lambda k=k, tol=tol: ph.eigenvalues(top_n=k, tol=tol, maxIter=1000))
            rows[f"PyHessian tol {tol:g}"] = (t, error(values, k))
            print(f"top-{k:<3} PyHessian (power iteration, tol {tol:g}){'':<5}{t:>9.1f}{error(values, k):>12.1e}")
        steps = max(ours.iterations, 2 * k)
        res, t = timed(lambda k=k, s=steps: et_lanczos(et_op, k=k, max_iter=s, tol=1e-3, which="LA", seed=0,
                                                        reorthogonalize=True))  # fmt: skip
        rows["eigenthings lanczos"] = (t, error(res.eigenvalues.cpu().numpy(), k))
        print(f"top-{k:<3} hessian-eigenthings lanczos ({steps} steps){'':<4}{t:>9.1f}"
              f"{error(res.eigenvalues.cpu().numpy(), k):>12.1e}{steps:>7}")  # fmt: skip
        res, t = timed(lambda k=k: deflated_power_iteration(et_op, k=k, max_iter=100, tol=1e-3, seed=0))
        rows["eigenthings power"] = (t, error(res.eigenvalues.cpu().numpy(), k))
        print(f"top-{k:<3} hessian-eigenthings power (tol 1e-3){'':<6}{t:>9.1f}"
              f"{error(res.eigenvalues.cpu().numpy(), k):>12.1e}")  # fmt: skip
        # at equal accuracy: the peers whose error is within the 1e-3 asked of every one, or within ours
        within = max(1e-3, error(ours.values, k))
        fastest = min([(t, name) for name, (t, err) in rows.items() if err <= within], default=(float("nan"), "none"))
        print(f"top-{k}: the fastest peer within {within:.2g} ({fastest[1]}) / ours = {fastest[0] / t_ours:.1f}x\n")

    if "trace" not in skip:
        (tr, se), t_ours = timed(lambda: hutchinson(matvec, p, probes=100, seed=0, dtype=torch.float32))

        def deflated(seed=0):  # as `hessian=lanczos` measures the trace: the top-10 run's Krylov basis deflates probes
            top = lanczos(matvec, p, 10, tol=1e-3, max_iter=400, seed=seed, values_only=True, dtype=torch.float32,
                          keep_basis=True)  # fmt: skip
            probes = args.deflated_probes
            return top.iterations + probes, hutchinson(matvec, p, probes=probes, seed=seed, deflate=top.krylov,
                                                       dtype=torch.float32)  # fmt: skip

        def alone(seed=0):
            steps, probes = args.trace_steps, args.deflated_probes
            return steps + probes, krylov_trace(matvec, p, steps=steps, probes=probes, seed=seed, dtype=torch.float32)

        ours = {"deflated by the top-10 Lanczos run's Krylov basis": deflated, "alone (krylov_trace)": alone}
        timings = {name: timed(fn) for name, fn in ours.items()}
        torch.manual_seed(0)
        samples, t_ph = timed(lambda: ph.trace(maxIter=100, tol=float("-inf")))
        se_ph = np.std(samples, ddof=1) / np.sqrt(len(samples))
        et, t_et = timed(lambda: et_hutchinson(et_op, num_samples=100, seed=0))
        print(f"trace, 100 Rademacher probes: ours {t_ours:.1f} s ({tr:.4g} +- {se:.2g}); PyHessian {t_ph:.1f} s "
              f"({np.mean(samples):.4g} +- {se_ph:.2g}); hessian-eigenthings {t_et:.1f} s "
              f"({float(et.estimate):.4g} +- {float(et.stderr):.2g}); the fastest peer / ours = "
              f"{min(t_ph, t_et) / t_ours:.1f}x")  # fmt: skip
        for name, fn in ours.items():
            (products, (tr_d, se_d)), t_d = timings[name]
            accuracy, how = se_d, "its standard error"
            if args.draws > 1:  # the spread over draws: one draw's standard error is itself a noisy estimate
                estimates = [tr_d] + [fn(seed)[1][0] for seed in range(1, args.draws)]
                accuracy, how = float(np.std(estimates, ddof=1)), f"the spread of {args.draws} draws"
            # at equal accuracy: the peers whose standard error is at least ours'
            peers = [(t, n) for n, t, s in (("PyHessian", t_ph, se_ph), ("eigenthings", t_et, float(et.stderr)))
                     if s >= accuracy]  # fmt: skip
            fastest = min(peers, default=(float("nan"), "none"))
            print(f"trace {name} ({products} products, {args.deflated_probes} probes): ours {t_d:.1f} s ({tr_d:.4g} "
                  f"+- {se_d:.2g}; {how} {accuracy:.2g}); the fastest peer at least as accurate ({fastest[1]}, "
                  f"100 probes) / ours = {fastest[0] / t_d:.1f}x")  # fmt: skip
        print()

    if "density" not in skip:
        _, t_ours = timed(lambda: slq(matvec, p, probes=4, steps=80, seed=0, dtype=torch.float32))
        torch.manual_seed(0)
        try:  # PyHessian 0.1 calls torch.eig, removed from torch in 1.9
            _, t_ph = timed(lambda: ph.density(iter=80, n_v=4))
            said = f"{t_ph:.1f} s"
        except RuntimeError as e:
            t_ph, said = float("inf"), f"fails ({str(e).splitlines()[0][:60]})"
        _, t_et = timed(lambda: spectral_density(et_op, num_runs=4, lanczos_steps=80, seed=0))
        print(
            f"density, 4 probes x 80 Lanczos steps: ours {t_ours:.1f} s; PyHessian {said}; "
            f"hessian-eigenthings {t_et:.1f} s; the fastest peer / ours = {min(t_ph, t_et) / t_ours:.1f}x"
        )


if __name__ == "__main__":
    main()
