"""Datasets: MNIST-1D from the package's generator, the synthetic set, and the torchvision loaders on
small files in the real formats (IDX for MNIST and Fashion-MNIST, pickled batches for CIFAR-10)."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sane_cli.data import load_data
from sane_cli.errors import UsageError


def cfg(**kw):
    return OmegaConf.create(kw)


def test_mnist1d_generates_caches_and_splits(tmp_path):
    c = cfg(name="mnist1d", n_train=120, n_test=40, per_class=None, data_seed=42, cache_dir=str(tmp_path))
    d = load_data(c)
    assert d.x_train.shape == (120, 40) and d.x_test.shape == (40, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) <= set(range(10)) and d.n_classes == 10
    assert len(list(tmp_path.glob("mnist1d_*.npz"))) == 1
    again = load_data(c)  # from the cache: identical
    assert torch.equal(again.x_train, d.x_train) and torch.equal(again.y_test, d.y_test)
    # the generator's own output, independently: same arrays in the same order
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split = 160, 1.0
    ref = make_dataset(args)
    np.testing.assert_allclose(d.x_train.numpy(), ref["x"][:120].astype(np.float32))
    np.testing.assert_array_equal(d.y_test.numpy(), ref["y"][120:160])


def test_synthetic_is_seeded_and_per_class_subsets():
    c = cfg(name="synthetic", n_train=90, n_test=30, per_class=None, n_features=5, n_classes=3, noise=0.5, data_seed=7)
    a, b = load_data(c), load_data(c)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert torch.bincount(a.y_train).tolist() == [30, 30, 30]
    sub = load_data(OmegaConf.merge(c, {"per_class": 4}))
    assert torch.bincount(sub.y_train).tolist() == [4, 4, 4]
    # the first four of each class, in their original order
    first = torch.cat([torch.nonzero(a.y_train == k).flatten()[:4] for k in range(3)]).sort().values
    assert torch.equal(sub.x_train, a.x_train[first])


def test_hessian_subset_is_fixed_by_seed():
    d = load_data(
        cfg(name="synthetic", n_train=50, n_test=10, per_class=None, n_features=3, n_classes=2, noise=1.0, data_seed=0)
    )
    x1, y1 = d.hessian_subset(20, seed=1)
    x2, _ = d.hessian_subset(20, seed=1)
    x3, _ = d.hessian_subset(20, seed=2)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3) and len(y1) == 20


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's IDX format: big-endian magic, sizes, then uint8 data."""
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, rows, cols) + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("name,sub", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_from_local_folder(tmp_path, name, sub):
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    train_y = (np.arange(30) % 10).astype(np.uint8)
    test_x = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    test_y = (np.arange(12) % 10).astype(np.uint8)
    write_idx(tmp_path / sub / "raw", "train", train_x, train_y)
    write_idx(tmp_path / sub / "raw", "t10k", test_x, test_y)
    d = load_data(cfg(name=name, root=str(tmp_path), n_train=20, n_test=None, per_class=None))
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28) and d.in_dim == 784
    np.testing.assert_array_equal(d.y_train.numpy(), train_y[:20])
    # standardised with the kept training images' mean and std
    raw = torch.as_tensor(train_x[:20]).float()[:, None] / 255  # one channel axis
    torch.testing.assert_close(d.x_train, (raw - raw.mean()) / raw.std())


def test_cifar10_batches_from_local_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    labels = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        lab = [(i + j) % 10 for j in range(4)]
        labels.append(lab)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": lab}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, f)
    d = load_data(cfg(name="cifar10", root=str(tmp_path), n_train=None, n_test=None, per_class=None))
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (4, 3, 32, 32) and d.in_dim == 3072
    assert d.y_train.tolist() == sum(labels[:5], []) and d.y_test.tolist() == labels[5]


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_folder_is_a_clear_error(tmp_path, name):
    with pytest.raises(UsageError, match=r"missing .* in .*; put the files there or set dataset.root"):
        load_data(cfg(name=name, root=str(tmp_path / "nowhere"), n_train=10, n_test=10, per_class=None))


def test_truncated_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    write_idx(raw, "t10k", np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    p = raw / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(UsageError, match="could not read"):
        load_data(cfg(name="mnist", root=str(tmp_path), n_train=5, n_test=5, per_class=None))


def test_a_crafted_cifar_pickle_is_refused_and_not_run(tmp_path):
    """torchvision's reader would unpickle anything; ours refuses every global but numpy's array builders."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": Payload(), "labels": [0], "label_names": ["a"]}, f)
    with pytest.raises(UsageError, match=r"dataset=cifar10: could not read .* posix.system is not allowed"):
        load_data(cfg(name="cifar10", root=str(tmp_path), n_train=None, n_test=None, per_class=None))
    assert not (tmp_path / "ran").exists()


def test_mnist_images_and_labels_of_different_sets_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", np.zeros((5, 28, 28), np.uint8), np.zeros(5, np.uint8))
    write_idx(raw, "t10k", np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.uint8))
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(UsageError, match=r"dataset=mnist: 5 images but 4 labels in the training files"):
        load_data(cfg(name="mnist", root=str(tmp_path), n_train=None, n_test=None, per_class=None))


def test_gzipped_files_get_the_gunzip_hint(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (raw / f"{name}.gz").write_bytes(b"")
    with pytest.raises(UsageError, match=r"\(found \.gz files: gunzip them\); put the files there"):
        load_data(cfg(name="mnist", root=str(tmp_path), n_train=None, n_test=None, per_class=None))


def test_a_null_data_root_is_a_clear_error():
    with pytest.raises(UsageError, match=r"dataset.root is null; set it to the folder that holds MNIST/raw"):
        load_data(cfg(name="mnist", root=None, n_train=None, n_test=None, per_class=None))
