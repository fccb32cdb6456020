"""Datasets: MNIST-1D from the package's generator, the synthetic set, and the torchvision loaders on
small files in the real formats (IDX for MNIST and Fashion-MNIST, pickled batches for CIFAR-10)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_only_folder, write_cifar10
from omegaconf import OmegaConf

from sane_cli.data import DATASETS, load_data
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


def test_label_noise_replaces_that_fraction_of_training_labels_only():
    c = cfg(name="synthetic", n_train=200, n_test=50, per_class=None, n_features=4, n_classes=5, noise=1.0,
            data_seed=3, label_noise=0.0, label_noise_seed=0)  # fmt: skip
    clean = load_data(c)
    noisy = load_data(OmegaConf.merge(c, {"label_noise": 0.3, "label_noise_seed": 1}))
    changed = noisy.y_train != clean.y_train
    assert int(changed.sum()) == 60  # exactly round(0.3 * 200), each to another class
    assert torch.equal(noisy.y_test, clean.y_test) and torch.equal(noisy.x_train, clean.x_train)
    assert int(noisy.y_train.min()) >= 0 and int(noisy.y_train.max()) < 5
    again = load_data(OmegaConf.merge(c, {"label_noise": 0.3, "label_noise_seed": 1}))
    other = load_data(OmegaConf.merge(c, {"label_noise": 0.3, "label_noise_seed": 2}))
    assert torch.equal(again.y_train, noisy.y_train) and not torch.equal(other.y_train, noisy.y_train)
    # the wrong labels are spread over the other classes: each of the 4 gets some of the 60
    shift = (noisy.y_train - clean.y_train)[changed] % 5
    assert set(shift.tolist()) == {1, 2, 3, 4}


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
    write_cifar10(tmp_path, n_per_batch=4)
    labels = [[(i + j) % 10 for j in range(4)] for i in range(6)]
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


def test_a_null_data_root_is_the_cache_folder(tmp_path, monkeypatch):
    """dataset.root null: the cache, $XDG_CACHE_HOME/sane-run/data (where downloads go)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "sane-run" / "data" / "MNIST" / "raw"
    with pytest.raises(UsageError, match=rf"missing .* in {folder}"):
        load_data(cfg(name="mnist", root=None, download=False, n_train=None, n_test=None, per_class=None))


# --- downloads on demand, from a local HTTP server serving files in the real formats ---------------------------


class _Server:
    """A local HTTP server (a thread) serving ``files`` (name -> bytes); ``mode``: ``ok``, ``truncated`` (declares
    every file's length but sends half of it, then closes), ``silent`` (accepts, never answers). Counts the
    requests it answered."""

    def __init__(self, files: dict[str, bytes]):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                name = self.path.rsplit("/", 1)[-1]
                if server.mode == "silent":
                    server.silent.wait(30)
                    return
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                server.requests.append(name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.mode == "truncated" else body)

            def log_message(self, *args):
                pass

        self.files, self.mode, self.requests = files, "ok", []
        self.silent = threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.silent.set()
        self.httpd.shutdown()


def _idx_archives() -> dict[str, bytes]:
    """MNIST's four files, small, in IDX format and gzipped as the mirrors serve them."""
    import gzip
    import io

    rng = np.random.default_rng(3)
    out = {}
    for prefix, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        raw = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + labels.tobytes(),
        }
        for name, data in raw.items():
            buf = io.BytesIO()
            with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
                f.write(data)
            out[f"{name}.gz"] = buf.getvalue()
    return out


@pytest.fixture
def mirror(monkeypatch):
    """The local server, and sane-run's MNIST source pointed at it with the served files' MD5 sums."""
    import hashlib

    from sane_cli import downloads

    files = _idx_archives()
    server = _Server(files)
    source = downloads.Source((server.url,), tuple((n, hashlib.md5(b).hexdigest()) for n, b in files.items()), "gz")
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], source=lambda: source))
    yield server
    server.close()


def _mnist(root, mirror=None):
    return cfg(name="mnist", root=str(root), download=True, mirror=mirror, n_train=20, n_test=None, per_class=None)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith(".download-"))


def test_a_missing_set_is_downloaded_checked_and_cached(tmp_path, mirror):
    d = load_data(_mnist(tmp_path / "data"))
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_test.shape == (12, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    ]  # fmt: skip
    asked = len(mirror.requests)  # each file once (and torchvision's probe for a redirect)
    assert set(mirror.requests) == set(_idx_archives()) and asked <= 8 and _leftovers(tmp_path / "data") == []
    load_data(_mnist(tmp_path / "data"))  # the cached copy: no request
    assert len(mirror.requests) == asked


@pytest.mark.parametrize("fault", ["checksum", "truncated", "silent", "refused"])
def test_a_failed_download_is_one_line_and_leaves_nothing_half_written(tmp_path, mirror, monkeypatch, fault):
    """A wrong MD5 sum, a download cut short, a server that stops answering (after the timeout), a server
    that is not there: one line naming the URL, the folder and how to place the files by hand; no file
    where the loader looks, no temporary."""
    from sane_cli import downloads

    monkeypatch.setattr(downloads, "TIMEOUT", 1.0)
    url, failing = mirror.url, "train-images-idx3-ubyte.gz"
    if fault == "checksum":  # the last of the four: the message names it, not the first
        failing = "t10k-labels-idx1-ubyte.gz"
        mirror.files[failing] = mirror.files["train-labels-idx1-ubyte.gz"]
    elif fault in ("truncated", "silent"):
        mirror.mode = fault
    else:
        import socket

        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    root = tmp_path / "data"
    with pytest.raises(UsageError) as caught:
        load_data(_mnist(root, mirror=url) if fault == "refused" else _mnist(root))
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"dataset=mnist: could not download {url}{failing} into {root} (")
    assert "put the files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, " in message
    assert f"into {root / 'MNIST' / 'raw'} by hand" in message
    assert not root.exists()  # the folder it made for the download, removed with it


def test_a_killed_downloads_leftovers_are_cleared_by_the_next(tmp_path, mirror):
    """A download killed outright (SIGKILL, or a signal during start-up, which ends the process at once) leaves
    its temporary folder with a part of a file; the next download, holding the lock, removes it."""
    root = tmp_path / "data"
    (root / ".download-killed").mkdir(parents=True)
    (root / ".download-killed" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b part")
    load_data(_mnist(root))
    assert _leftovers(root) == []


def test_a_read_only_data_folder(tmp_path, mirror, caplog):
    """dataset.root read-only with files to download: one line naming the folder and the fix; the default
    dataset's cache folder read-only: the run goes on (the data generated, not cached) with a warning."""
    with read_only_folder(tmp_path / "ro") as ro:
        with pytest.raises(UsageError, match=rf"dataset=mnist: cannot download into {ro} \(Read-only file system|"
                           r"Permission denied\); put the files .* by hand, or set dataset.root"):  # fmt: skip
            load_data(_mnist(ro))
        with caplog.at_level("WARNING"):
            d = load_data(cfg(name="mnist1d", cache_dir=str(ro / "cache"), n_train=40, n_test=20, data_seed=0))
        assert d.x_train.shape[0] == 40
        assert any(f"cannot cache the generated data in {ro / 'cache'}" in r.getMessage() for r in caplog.records)


def test_jobs_downloading_at_once_share_one_download(tmp_path, mirror):
    """Four jobs start together on an empty folder: one downloads, the others wait for its lock and find
    the files; every job loads the same data."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        sets = list(pool.map(lambda _: load_data(_mnist(tmp_path / "data")), range(4)))
    assert set(mirror.requests) == set(_idx_archives()) and len(mirror.requests) <= 8  # one job's download
    assert all(torch.equal(s.x_train, sets[0].x_train) for s in sets)


def test_cifar10_is_unpacked_from_its_archive(tmp_path, monkeypatch):
    """CIFAR-10 comes as one tar.gz holding cifar-10-batches-py/: unpacked, its files moved into place."""
    import hashlib
    import io
    import tarfile

    from sane_cli import downloads

    buf, rng = io.BytesIO(), np.random.default_rng(2)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch", "batches.meta"]:
            data = pickle.dumps({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3],
                                 "label_names": [f"c{k}" for k in range(10)]})  # fmt: skip
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    server = _Server({"cifar-10-python.tar.gz": archive})
    source = downloads.Source((server.url,), (("cifar-10-python.tar.gz", hashlib.md5(archive).hexdigest()),), "tar")
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], source=lambda: source))
    try:
        d = load_data(cfg(name="cifar10", root=str(tmp_path), download=True, mirror=None, n_train=None, n_test=None,
                          per_class=None))  # fmt: skip
    finally:
        server.close()
    assert d.x_train.shape == (15, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert _leftovers(tmp_path) == []
