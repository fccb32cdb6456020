"""Standard image sets fetched on demand (``dataset.download``): MNIST, Fashion-MNIST and CIFAR-10, by
torchvision's own downloader (its mirrors, its MD5 sums, its progress bar), into ``dataset.root``.

Nothing half-written is ever left where the loaders look: the archives are downloaded and checked into a
temporary folder beside the data, unpacked there, and each file renamed into place only when all of them
are whole. A lock on the data folder makes concurrent jobs (a sweep's, or two commands') wait for one
download rather than write the same files at once; the waiting ones then find the files there.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

TIMEOUT = 60.0  # seconds without a byte from the server before a download counts as failed


@dataclass(frozen=True)
class Source:
    """Where an image set comes from: its archives (file name, MD5) at each of its mirrors (URL prefixes),
    and how they unpack into the files the loader reads (``gz``: one file each; ``tar``: a folder)."""

    mirrors: tuple[str, ...]
    archives: tuple[tuple[str, str], ...]
    unpack: str


def source_of(cls) -> Source:
    """Where torchvision's dataset class ``cls`` downloads its set from, read from the class (so that a
    torchvision with other mirrors or sums is followed): MNIST-style classes' gzipped idx files, or CIFAR's
    tar archive."""
    if hasattr(cls, "mirrors"):
        return Source(tuple(cls.mirrors), tuple((name, md5) for name, md5 in cls.resources), "gz")
    return Source((cls.url.rsplit("/", 1)[0] + "/",), ((cls.filename, cls.tgz_md5),), "tar")


def fetch(name: str, root: Path, folder: str, files: list[str], source: Source, mirror: str | None = None) -> None:
    """Put the ``files`` of the image set ``name`` into ``root/folder``, downloading what is missing.

    Args:
        name: the dataset option (``mnist``, ``fashion_mnist``, ``cifar10``).
        root: ``dataset.root``; made if needed.
        folder: the folder below ``root`` the loader reads (``MNIST/raw``, ``cifar-10-batches-py``).
        files: the file names the loader needs there.
        source: the mirrors, archives and their MD5 sums (:func:`source_of`).
        mirror: a URL prefix to fetch the archives from in place of torchvision's mirrors (their names and
            MD5 sums unchanged): a local mirror, or a test server.

    Raises:
        UsageError: one line naming the URL, the folder and how to place the files by hand, where every
            mirror failed (offline, refused, timed out, a wrong checksum, a cut download).
    """
    target = root / folder
    if all((target / f).is_file() for f in files):
        return
    mirrors = (mirror.rstrip("/") + "/",) if mirror else source.mirrors
    made = [p for p in (root, *root.parents) if not p.exists()]  # the folders this call makes
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"dataset={name}: cannot make the data folder {root} ({e.strerror}); set dataset.root") from e
    try:
        _fetch(name, source, mirrors, root, target, files)
    except BaseException:
        if made:  # a failed first download leaves no folder behind
            (root / LOCK).unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise


LOCK = ".sane-run-download.lock"


def _fetch(name: str, source: Source, mirrors: tuple[str, ...], root: Path, target: Path, files: list[str]) -> None:
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(root / LOCK))
        except OSError as e:  # a read-only data folder
            raise UsageError(
                f"dataset={name}: cannot download into {root} ({e.strerror}); put the files ({', '.join(files)}) into "
                f"{target} by hand, or set dataset.root to a folder you can write"
            ) from None
        if all((target / f).is_file() for f in files):  # another job fetched them while this one waited
            return
        for stale in root.glob(".download-*"):  # of a download killed before it could clean up (no one else holds
            shutil.rmtree(stale, ignore_errors=True)  # the lock: none is under way)
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        try:
            failure = None
            for prefix in mirrors:
                try:
                    for archive, md5 in source.archives:
                        failure = (prefix, archive, None)
                        _download(prefix + archive, work, archive, md5)
                    failure = None
                    break
                except (OSError, RuntimeError, ValueError) as e:  # URLError and socket timeouts are OSErrors
                    failure = (failure[0], failure[1], e)
                    for archive, _ in source.archives:
                        (work / archive).unlink(missing_ok=True)
            if failure is not None:
                prefix, archive, e = failure
                reason = str(getattr(e, "reason", None) or e).splitlines()[0] or type(e).__name__
                raise UsageError(
                    f"dataset={name}: could not download {prefix}{archive} into {root} ({reason}); "
                    f"offline? put the files ({', '.join(files)}) into {target} by hand, or set dataset.mirror to a "
                    "mirror you can reach; dataset.download=false never downloads"
                )
            unpacked = _unpack(source, work)
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                if not (target / f).is_file():
                    os.replace(_find(unpacked, f, name), target / f)  # whole files only, each in one step
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _download(url: str, folder: Path, filename: str, md5: str) -> None:
    """torchvision's download (progress bar, redirects, MD5 check), with a timeout on a silent server."""
    from torchvision.datasets.utils import check_integrity, download_url

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT)
    try:
        download_url(url, str(folder), filename, md5)
    finally:
        socket.setdefaulttimeout(previous)
    if not check_integrity(str(folder / filename), md5):  # (download_url checks it too)
        raise RuntimeError(f"{filename}: wrong MD5 sum (a cut or altered download)")


def _unpack(source: Source, work: Path) -> Path:
    """The archives in ``work`` unpacked into ``work/unpacked``: gzip files one by one, tar archives with
    only regular files and folders below the folder (no links, no absolute or parent paths)."""
    out = work / "unpacked"
    out.mkdir()
    for archive, _ in source.archives:
        path = work / archive
        if source.unpack == "gz":
            with gzip.open(path, "rb") as src, open(out / archive.removesuffix(".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(path, "r:*") as tar:
                tar.extractall(out, filter="data")
    return out


def _find(unpacked: Path, name: str, dataset: str) -> Path:
    found = sorted(unpacked.rglob(name))
    if not found:
        raise UsageError(f"dataset={dataset}: the downloaded archives hold no {name}; the mirror serves other files")
    return found[0]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock (flock) on ``path``, released however the process ends."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
