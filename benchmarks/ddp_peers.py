"""Data-parallel curvature beside hessian-eigenthings' data-parallel operator (`DDPHessianOperator`), on ResNet-20.

Run once per world size, alone on the machine, with as many threads in all as the machine has cores:

  torchrun --standalone --nproc_per_node 1 benchmarks/ddp_peers.py --threads 2    1 rank x 2 threads
  torchrun --standalone --nproc_per_node 2 benchmarks/ddp_peers.py --threads 1    2 ranks x 1 thread

Each rank writes the same CIFAR-10-format images (random pixels, seeded), builds the same ResNet-20 (eval mode,
running statistics from three training-mode passes over all the images) and keeps its contiguous shard of them.
Ours: `hvp_operator` on the shard, each product summed over the ranks (sane-run's data-parallel path); theirs:
`DDPHessianOperator` on the shard (it all-reduces the gradient, then the product). The same top-10 Lanczos
(ours: tol 1e-3 on the eigenvalue bound; theirs: which='LA', tol 1e-3, as many steps as ours took) and a
100-probe Rademacher trace on each; float32. Rank 0 prints the seconds and the top-10 eigenvalues of both.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from sane_cli import distributed
from sane_cli.curvature import hvp_operator
from sane_cli.data import load_data
from sane_cli.iterative import hutchinson, lanczos
from sane_cli.models import ResNet

sys.path.insert(0, str(Path(__file__).parent))
from resnet import timed, write_cifar10  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64, help="training images, over all ranks")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: top10, trace")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    torch.set_num_threads(args.threads)
    world = distributed.start()
    root = Path(tempfile.mkdtemp())
    write_cifar10(root, per_batch=max(1, args.images // 5 + 1))
    spec = dict(name="cifar10", root=str(root), download=False, mirror=None, n_train=args.images, n_test=1,
                per_class=None, label_noise=0.0, label_noise_seed=0)  # fmt: skip
    data = load_data(OmegaConf.create(spec))
    torch.manual_seed(0)
    model = ResNet((3, 32, 32), 10, depth=20)
    with torch.no_grad():
        for _ in range(3):
            model(data.x_train)
    model.eval()
    shard = world.shard(len(data.y_train))
    x, y = data.x_train[shard], data.y_train[shard]
    loss_fn = torch.nn.CrossEntropyLoss()
    p = sum(q.numel() for q in model.parameters())
    say = print if world.main else (lambda *a, **k: None)
    say(f"torch {torch.__version__}; {world.size} rank(s) x {args.threads} thread(s); ResNet-20 ({p:,} parameters), "
        f"{args.images} CIFAR-10-format images ({len(y)} on rank 0), eval mode, float32\n")  # fmt: skip

    from hessian_eigenthings import DDPHessianOperator, supervised_loss
    from hessian_eigenthings import hutchinson as et_hutchinson
    from hessian_eigenthings import lanczos as et_lanczos

    matvec, _ = hvp_operator(model, loss_fn, x, y, dtype=torch.float32)
    et_op = DDPHessianOperator(copy.deepcopy(model), [(x, y)], supervised_loss(loss_fn))
    v = torch.randn(1, p, generator=torch.Generator().manual_seed(1))
    ours_v, theirs_v = matvec(v)[0], et_op.matvec(v[0].clone())  # the first product of each outside the timings
    apart = float((ours_v - theirs_v).norm() / ours_v.norm())
    say(f"one product, ours against theirs: relative difference {apart:.1e}")

    if "top10" not in skip:
        ours, t_ours = timed(lambda: lanczos(matvec, p, 10, tol=1e-3, max_iter=400, seed=0, values_only=True,
                                             dtype=torch.float32))  # fmt: skip
        res, t_et = timed(lambda: et_lanczos(et_op, k=10, max_iter=max(ours.iterations, 20), tol=1e-3, which="LA",
                                             seed=0, reorthogonalize=True))  # fmt: skip
        theirs = np.sort(res.eigenvalues.cpu().numpy())[::-1][:10]
        gap = float(np.max(np.abs(theirs - ours.values) / np.abs(ours.values)))
        say(f"top-10 Lanczos: ours {t_ours:.1f} s ({ours.iterations} products), eigenthings {t_et:.1f} s "
            f"(max_iter {max(ours.iterations, 20)}); theirs / ours = {t_et / t_ours:.2f}x; eigenvalues apart by at "
            f"most {gap:.1e} (relative); ours {np.array2string(ours.values, precision=1)}")  # fmt: skip
    if "trace" not in skip:
        (tr, se), t_ours = timed(lambda: hutchinson(matvec, p, probes=100, seed=0, dtype=torch.float32))
        et, t_et = timed(lambda: et_hutchinson(et_op, num_samples=100, seed=0))
        say(f"trace, 100 Rademacher probes: ours {t_ours:.1f} s ({tr:.4g} +- {se:.2g}), eigenthings {t_et:.1f} s "
            f"({float(et.estimate):.4g} +- {float(et.stderr):.2g}); theirs / ours = {t_et / t_ours:.2f}x")  # fmt: skip
    if world.size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
