"""Datasets, as in-memory tensors: MNIST-1D (generated offline), a synthetic set, scikit-learn's bundled
8x8 digits, and MNIST, Fashion-MNIST and CIFAR-10 read through torchvision from a local folder (never
downloaded).

Inputs are float32 of shape (n, features...) and standardised with the training set's mean and
standard deviation; labels are int64 class indices.

Adding a dataset: its loader (config -> :class:`Data`), its sizes (known without loading it, for the checks
before a sweep) and the checks of its own keys here, an entry in :data:`DATASETS`, its
``conf/dataset/<name>.yaml`` (every key commented), and its tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checks
from .errors import UsageError

log = logging.getLogger(__name__)


@dataclass
class Data:
    """Train and test tensors of one dataset."""

    name: str
    x_train: torch.Tensor  # (n_train, *input_shape) float32
    y_train: torch.Tensor  # (n_train,) int64
    x_test: torch.Tensor  # (n_test, *input_shape) float32
    y_test: torch.Tensor  # (n_test,) int64
    n_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: (features,) for vectors, (channels, height, width) for images."""
        return tuple(self.x_train.shape[1:])

    @property
    def in_dim(self) -> int:
        return int(np.prod(self.input_shape))

    def hessian_subset(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed, seeded subset of the training set on which every Hessian of a run is taken."""
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.y_train), generator=gen)[:size].sort().values
        return self.x_train[idx], self.y_train[idx]


DIGITS = (1797, (1, 8, 8))  # scikit-learn's bundled handwritten digits: examples, image shape


def load_data(cfg) -> Data:
    """The dataset described by ``cfg`` (the `dataset` config group), subset as configured."""
    data = DATASETS[cfg.name].load(cfg)
    if cfg.get("per_class") is not None:
        keep = _first_per_class(data.y_train, int(cfg.per_class), data.n_classes)
        data.x_train, data.y_train = data.x_train[keep], data.y_train[keep]
    if cfg.get("label_noise"):
        data.y_train = noisy_labels(data.y_train, float(cfg.label_noise), data.n_classes, int(cfg.label_noise_seed))
    return data


def noisy_labels(y: torch.Tensor, fraction: float, n_classes: int, seed: int) -> torch.Tensor:
    """``y`` with round(fraction * n) labels, at seeded positions, replaced by a class drawn uniformly from the
    other n_classes - 1: a known lever on generalisation (the net must memorise them; Zhang et al. 2017).

    >>> y = torch.zeros(10, dtype=torch.int64)
    >>> noisy = noisy_labels(y, 0.3, 4, seed=0)
    >>> int((noisy != y).sum()), bool(noisy.max() < 4)
    (3, True)
    """
    gen = torch.Generator().manual_seed(seed)
    flipped = torch.randperm(len(y), generator=gen)[: round(fraction * len(y))]
    shift = torch.randint(1, n_classes, (len(flipped),), generator=gen)  # never 0: always another class
    out = y.clone()
    out[flipped] = (y[flipped] + shift) % n_classes
    return out


def dataset_sizes(cfg) -> tuple[tuple[int, ...], int, int]:
    """(one example's shape, classes, training examples at most) of the dataset ``cfg`` describes, without
    loading it: enough to check a config against its data before any run starts (the image sets may hold
    fewer examples than their official size; the exact count is checked again once loaded)."""
    shape, n_classes, n_train = DATASETS[cfg.name].sizes(cfg)
    if cfg.get("per_class") is not None:
        n_train = min(n_train, int(cfg.per_class) * n_classes)
    return shape, n_classes, n_train


def check_config(cfg) -> None:
    """The ``dataset`` group's keys of a run config: the name and sizes, then the option's own keys."""
    checks.choice(cfg, "dataset.name", DATASETS)
    local = DATASETS[cfg.dataset.name].folder is not None  # the image sets: null keeps every example
    checks.number(cfg, "dataset.n_train", minimum=1, integer=True, optional=local)
    checks.number(cfg, "dataset.n_test", minimum=1, integer=True, optional=local)
    checks.number(cfg, "dataset.per_class", minimum=1, integer=True, optional=True)
    if "label_noise" in cfg.dataset:  # an older run config lacks it (records.ADDED_KEYS: no noise)
        checks.fraction(cfg, "dataset.label_noise")
        checks.number(cfg, "dataset.label_noise_seed", minimum=0, integer=True)
    if "data_seed" in cfg.dataset:  # generated and shuffled sets
        checks.number(cfg, "dataset.data_seed", minimum=0, integer=True)
        if cfg.dataset.data_seed > 2**32 - 1:
            checks.fail("dataset.data_seed", cfg.dataset.data_seed, "must be at most 2^32 - 1 (a generator's seed)")
    if "root" in cfg.dataset:
        checks.path(cfg, "dataset.root", optional=True)  # null: said where the files are looked for
    if "cache_dir" in cfg.dataset:
        checks.path(cfg, "dataset.cache_dir", optional=True)
    if "download" in cfg.dataset:
        checks.flag(cfg, "dataset.download")
    if "mirror" in cfg.dataset:
        mirror = cfg.dataset.mirror
        if mirror is not None and not (isinstance(mirror, str) and mirror.startswith(("http://", "https://", "file:"))):
            checks.fail("dataset.mirror", mirror, "must be a URL (http://, https://, file:) or null (torchvision's)")
    DATASETS[cfg.dataset.name].check(cfg)


def _check_synthetic(cfg) -> None:
    checks.number(cfg, "dataset.n_features", minimum=1, integer=True)
    checks.number(cfg, "dataset.n_classes", minimum=2, integer=True)
    checks.number(cfg, "dataset.noise", minimum=0)


def _check_digits(cfg) -> None:
    if cfg.dataset.n_train + cfg.dataset.n_test > DIGITS[0]:
        checks.fail("dataset.n_train", cfg.dataset.n_train, f"plus dataset.n_test ({cfg.dataset.n_test}) must be at "
                    f"most {DIGITS[0]}, the images of dataset=digits")  # fmt: skip


def _no_checks(cfg) -> None:
    """A dataset without keys of its own."""


def _digits(cfg) -> Data:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 16 grey levels; no download), as
    (1, 8, 8) images, shuffled by ``data_seed`` and split into the first n_train and the next n_test."""
    from sklearn.datasets import load_digits

    n_train, n_test = int(cfg.n_train), int(cfg.n_test)  # their sum is checked (_check_digits)
    x, y = load_digits(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(int(cfg.data_seed)))
    x = torch.as_tensor(x, dtype=torch.float32)[order].reshape(-1, *DIGITS[1]) / 16.0
    y = torch.as_tensor(y, dtype=torch.int64)[order]
    x_train, x_test = _standardise(x[:n_train], x[n_train : n_train + n_test])
    return Data("digits", x_train, y[:n_train], x_test, y[n_train : n_train + n_test], 10)


def _first_per_class(y: torch.Tensor, per_class: int, n_classes: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of each class, in their original order."""
    keep = torch.zeros_like(y, dtype=torch.bool)
    for c in range(n_classes):
        keep[torch.nonzero(y == c).flatten()[:per_class]] = True
    return torch.nonzero(keep).flatten()


def _standardise(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
    return (x_train - mean) / std, (x_test - mean) / std


def _cache_dir(cfg) -> Path:
    if cfg.get("cache_dir"):
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sane-run"


def _mnist1d(cfg) -> Data:
    """MNIST-1D from the `mnist1d` package's generator; the arrays are cached since generating takes seconds."""
    n_train, n_test = int(cfg.n_train), int(cfg.n_test)
    total = -(-(n_train + n_test) // 10) * 10  # the generator makes the same number of each of the 10 classes
    key = hashlib.sha1(f"mnist1d-v1-{total}-{int(cfg.data_seed)}".encode()).hexdigest()[:12]
    path = _cache_dir(cfg) / f"mnist1d_{key}.npz"
    if path.exists():
        with np.load(path) as f:
            x, y = f["x"], f["y"]
    else:
        x, y = _generate_mnist1d(total, int(cfg.data_seed))
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(tmp, x=x, y=y)
            os.replace(tmp, path)  # atomic, so parallel runs never read a half-written cache
        except OSError as e:  # a read-only or full cache folder: the run goes on, generating the data each time
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning("dataset=mnist1d: cannot cache the generated data in %s (%s); set dataset.cache_dir to a "
                        "writable folder to keep it between runs", path.parent, e.strerror)  # fmt: skip
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.int64)
    return Data("mnist1d", x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test], 10)


def _generate_mnist1d(total: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = total, 1.0, seed
    # The generator reseeds the global `random` and NumPy generators; leave them as they were.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"].astype(np.float32), d["y"].astype(np.int64)


def _synthetic(cfg) -> Data:
    """Gaussian classes around means of norm 2, balanced labels, from a generator seeded by data_seed."""
    gen = torch.Generator().manual_seed(int(cfg.data_seed))
    c, d = int(cfg.n_classes), int(cfg.n_features)
    means = torch.randn(c, d, generator=gen)
    means = 2.0 * means / means.norm(dim=1, keepdim=True)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % c
        y = y[torch.randperm(n, generator=gen)]
        x = means[y] + float(cfg.noise) * torch.randn(n, d, generator=gen)
        return x, y

    x_train, y_train = draw(int(cfg.n_train))
    x_test, y_test = draw(int(cfg.n_test))
    x_train, x_test = _standardise(x_train, x_test)
    return Data("synthetic", x_train, y_train, x_test, y_test, c)


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def data_root(cfg) -> Path:
    """``dataset.root``, or where null the cache folder of downloaded sets: ``$XDG_CACHE_HOME/sane-run/data``
    (``~/.cache/sane-run/data``)."""
    if cfg.get("root") is None:
        return _cache_dir(cfg) / "data"
    return Path(str(cfg.root)).expanduser().resolve()


def _local_files(cfg) -> tuple[Path, Path, list[str]]:
    """(root, folder holding the files, file names) of a dataset read from a local folder."""
    root, spec = data_root(cfg), DATASETS[cfg.name]
    return root, root / spec.folder, list(spec.files)


def check_files(cfg) -> None:
    """For the datasets read from a local folder, check that the expected files are there, downloading
    them first where ``dataset.download`` is set (:func:`sane_cli.downloads.fetch`).

    Raises:
        UsageError: naming the missing files, the folder looked in and the fix (or why the download failed).
    """
    if DATASETS[cfg.name].folder is None:
        return
    root, folder, files = _local_files(cfg)
    if cfg.get("download") and not all((folder / f).is_file() for f in files):
        from .downloads import fetch

        fetch(cfg.name, root, DATASETS[cfg.name].folder, files, DATASETS[cfg.name].source(), cfg.get("mirror"))
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        hint = " (found .gz files: gunzip them)" if any((folder / f"{m}.gz").is_file() for m in missing) else ""
        raise UsageError(
            f"dataset={cfg.name}: missing {', '.join(missing)} in {folder}{hint}; "
            f"put the files there or set dataset.root to the folder that holds {DATASETS[cfg.name].folder}"
        )


def _torchvision(cfg) -> Data:

    check_files(cfg)
    root, folder, _ = _local_files(cfg)
    make = DATASETS[cfg.name].reader()
    try:
        with _safe_unpickling():
            train, test = make(str(root), train=True), make(str(root), train=False)
    except Exception as e:  # torchvision's parsers raise assorted errors on truncated files
        raise UsageError(f"dataset={cfg.name}: could not read the files in {folder}: {e}".splitlines()[0]) from e

    def tensors(ds, n) -> tuple[torch.Tensor, torch.Tensor]:
        if len(ds.data) != len(ds.targets):
            raise UsageError(
                f"dataset={cfg.name}: {len(ds.data)} images but {len(ds.targets)} labels in the "
                f"{'training' if ds.train else 'test'} files of {folder}; the image and label files must come "
                "from the same set"
            )
        x = torch.as_tensor(np.asarray(ds.data)).float() / 255.0
        if x.ndim == 4:  # CIFAR is stored (n, 32, 32, 3); keep torch's channels-first layout
            x = x.permute(0, 3, 1, 2)
        else:  # (MNIST, Fashion-MNIST) (n, 28, 28): one channel
            x = x[:, None]
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        n = len(y) if n is None else min(int(n), len(y))
        return x[:n].contiguous(), y[:n]

    x_train, y_train = tensors(train, cfg.n_train)
    x_test, y_test = tensors(test, cfg.n_test)
    x_train, x_test = _standardise(x_train, x_test)
    return Data(cfg.name, x_train, y_train, x_test, y_test, 10)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's python batches hold: dicts, lists, strings, bytes, numbers and numpy
    arrays. Any other global (a function such as os.system, which a crafted file could call) is refused,
    where pickle.load would run it."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a dataset file (refused, not run)")
        return super().find_class(module, name)


class _SafePickle:
    """Stands in for the pickle module inside torchvision's CIFAR reader (see :func:`_safe_unpickling`)."""

    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, *, encoding: str = "ASCII"):
        return _RestrictedUnpickler(file, encoding=encoding).load()


@contextlib.contextmanager
def _safe_unpickling():
    """torchvision's CIFAR reader calls pickle.load on the batch files; while this is active it calls
    :class:`_RestrictedUnpickler` instead, so a crafted file cannot run code."""
    from torchvision.datasets import cifar

    saved, cifar.pickle = cifar.pickle, _SafePickle
    try:
        yield
    finally:
        cifar.pickle = saved


def _local_cifar10() -> type:
    """torchvision's CIFAR10, checking that the files exist but not their MD5 sums, so that re-packed or
    subset copies in the official python-batch format load too. Never downloads."""
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        train_list = [[f, None] for f, _ in CIFAR10.train_list]
        test_list = [[f, None] for f, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return LocalCIFAR10


def _image_sizes(shape: tuple[int, ...], official: int):
    """The sizes of an image set of ``official`` training images of ``shape``, n_train null keeping all."""

    def sizes(cfg) -> tuple[tuple[int, ...], int, int]:
        return shape, 10, official if cfg.get("n_train") is None else min(int(cfg.n_train), official)

    return sizes


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset option: its loader, its sizes without loading it, the checks of its own keys, and for a set
    read from a local folder the folder below ``dataset.root`` that holds its files, their names, the
    torchvision class that reads them and where they are downloaded from."""

    load: Callable[..., Data]  # (dataset config) -> Data
    sizes: Callable[..., tuple[tuple[int, ...], int, int]]  # (dataset config) -> (shape, classes, n_train max)
    check: Callable[..., None] = _no_checks  # (whole run config) -> None
    folder: str | None = None
    files: tuple[str, ...] = ()
    reader: Callable[[], type] | None = None  # () -> the torchvision dataset class (imported when called)
    source: Callable[[], Any] | None = None  # () -> its sane_cli.downloads.Source (mirrors, archives and sums)


def _torchvision_class(name: str) -> Callable[[], type]:
    def reader() -> type:
        from torchvision import datasets

        return getattr(datasets, name)

    return reader


def _source(name: str) -> Callable[[], Any]:
    def source():
        from torchvision import datasets

        from .downloads import source_of

        return source_of(getattr(datasets, name))

    return source


DATASETS = checks.Registry("dataset.name", {
    "mnist1d": DatasetSpec(_mnist1d, lambda cfg: ((40,), 10, int(cfg.n_train))),
    "synthetic": DatasetSpec(_synthetic, lambda cfg: ((int(cfg.n_features),), int(cfg.n_classes), int(cfg.n_train)),
                             _check_synthetic),
    "digits": DatasetSpec(_digits, lambda cfg: (DIGITS[1], 10, int(cfg.n_train)), _check_digits),
    "mnist": DatasetSpec(_torchvision, _image_sizes((1, 28, 28), 60000), folder="MNIST/raw", files=_MNIST_FILES,
                         reader=_torchvision_class("MNIST"), source=_source("MNIST")),
    "fashion_mnist": DatasetSpec(_torchvision, _image_sizes((1, 28, 28), 60000), folder="FashionMNIST/raw",
                                 files=_MNIST_FILES, reader=_torchvision_class("FashionMNIST"),
                                 source=_source("FashionMNIST")),
    "cifar10": DatasetSpec(_torchvision, _image_sizes((3, 32, 32), 50000), folder="cifar-10-batches-py",
                           files=_CIFAR_FILES, reader=_local_cifar10, source=_source("CIFAR10")),
})  # fmt: skip
