"""Helpers shared by the tests: the composed tiny-run config and the dense reference Hessian."""

from __future__ import annotations

import contextlib
import os
import subprocess

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from torch.func import functional_call

from sane_cli.curvature import flatten_parameters


@contextlib.contextmanager
def read_only_folder(path):
    """A folder that nothing can be written into: a read-only tmpfs where this process is root (file permissions
    do not stop root), else a folder without write permission; the test is skipped where neither can be made."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a read-only file system here ({made.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


TINY = [
    "dataset=synthetic",
    "dataset.n_train=96",
    "dataset.n_test=48",
    "dataset.n_features=6",
    "dataset.n_classes=3",
    "model.width=5",
    "depth=2",
    "steps=20",
    "log_every=5",
    "hessian.every=10",
    "hessian.topk_vectors=3",
    "device=cpu",
    "lr=0.1",
]


def make_config(*overrides: str):
    """The real config (conf/config.yaml) composed with the tiny-run overrides, then ``overrides``."""
    with initialize_config_module(version_base="1.3", config_module="sane_cli.conf"):
        return compose("config", overrides=[*TINY, *overrides])


def reference_hessian(model, loss_fn, x, y) -> torch.Tensor:
    """torch.func.hessian of the mean loss in the flattened parameters, float64."""
    model = model.double()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = flatten_parameters(model)

    def f(t):
        parts = t.split([int(np.prod(s)) for s in shapes])
        params = {n: p.view(s) for n, p, s in zip(names, parts, shapes, strict=True)}
        return loss_fn(functional_call(model, params, (x.double(),)), y)

    return torch.func.hessian(f)(theta)


# custom models (model.factory=helpers:<name>) that a user's factory may be: tested in test_models


def shared_layer_mlp(input_shape, n_classes, width=6):
    """One hidden layer used twice (its weights tied): the parameters are counted once."""
    from torch import nn

    hidden = nn.Linear(width, width)
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Tanh(), hidden, nn.Tanh(),
                         hidden, nn.Tanh(), nn.Linear(width, n_classes))  # fmt: skip


def item_width_mlp(input_shape, n_classes):
    """A factory that reads a tensor's value (``.item()``), which the meta device cannot give."""
    from torch import nn

    width = int(torch.tensor(5.0).item())
    first = nn.Linear(int(np.prod(input_shape)), width)
    return nn.Sequential(nn.Flatten(), first, nn.Tanh(), nn.Linear(width, n_classes))


def one_output_too_many(input_shape, n_classes):
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), n_classes + 1))


def nan_outputs(input_shape, n_classes):
    """Outputs that are NaN from the start."""
    from torch import nn

    class NaN(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(int(np.prod(input_shape)), n_classes)

        def forward(self, x):
            return self.linear(x.flatten(1)) * float("nan")

    return NaN()


def exits(input_shape, n_classes):
    import sys

    sys.exit(3)


def fails_in_training(input_shape, n_classes, fail=False, hang=None, width=4):
    """A model that fails on its first training step where ``fail`` (as an out-of-memory error or a bad
    combination of keys shows only at run time; the checks before a run, on an evaluation batch, pass), or whose
    training steps each take half a second where ``hang`` names a file, into which it writes its process id."""
    import os
    import time

    from torch import nn

    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Tanh(),
                                     nn.Linear(width, n_classes))  # fmt: skip

        def forward(self, x):
            if not self.training or x.device.type == "meta":  # the checks before a run, its cost counted
                return self.net(x)
            if fail:
                raise RuntimeError("a simulated failure in training")
            if hang:
                if not os.path.exists(hang):
                    with open(hang, "w") as f:
                        f.write(str(os.getpid()))
                time.sleep(0.5)
            return self.net(x)

    return Failing()


def dies_in_training(input_shape, n_classes, step=7, width=4):
    """A small MLP (tanh) whose process kills itself (SIGKILL) at its ``step``-th training forward pass where the
    environment's ``DIE_ON_RANK`` names its rank (the ``RANK`` that torchrun sets; 0 in a single process): a rank
    that dies, as one the OOM killer takes. Anywhere else it trains as any model."""
    import os
    import signal

    from torch import nn

    class Dying(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Tanh(),
                                     nn.Linear(width, n_classes))  # fmt: skip
            self.forwards = 0

        def forward(self, x):
            if self.training and x.device.type != "meta":
                self.forwards += 1
                if self.forwards == step and os.environ.get("DIE_ON_RANK") == os.environ.get("RANK", "0"):
                    os.kill(os.getpid(), signal.SIGKILL)
            return self.net(x)

    return Dying()


def write_cifar10(root, n_per_batch: int = 6, seed: int = 1) -> None:
    """A CIFAR-10 folder in the official python format under ``root``: five training batches and a test batch of
    ``n_per_batch`` random images each, batch i's j-th label (i + j) % 10."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [(i + j) % 10 for j in range(n_per_batch)]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
