"""The two dataset file formats: their parsers, the checks staging verifies with, the fetchers
that write them, and the loaders a trial's workload calls (which only read: bench/staging.py).

Fashion-MNIST: `fashion-mnist/*.gz`, the four gzipped IDX files keras.datasets reads. CIFAR-10:
`cifar-10-batches-bin/*.bin`, the binary version. A check parses a file in full (gzip CRC and
length, IDX header against the payload, CIFAR record size and label range); a download whose size
is the published one must match the published MD5. `$REGBENCH_DATA_MIRROR` holds
`fashion-mnist/<file>.gz` and `cifar-10-binary.tar.gz`.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import pathlib
import shutil
import tarfile
import tempfile
import zlib

import numpy as np

from bench import staging
from bench.staging import Dataset

# Fashion-MNIST: four gzipped IDX files; the published MD5s (zalandoresearch/fashion-mnist README).
FASHION_BASE = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_FILES = {  # name: (IDX rank, published item count, published MD5)
    "train-labels-idx1-ubyte.gz": (1, 60000, "25c81989df183df01b3e8a0aad5dffbe"),
    "train-images-idx3-ubyte.gz": (3, 60000, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "t10k-labels-idx1-ubyte.gz": (1, 10000, "bb300cfdad3c16e7a12a480ee83cd310"),
    "t10k-images-idx3-ubyte.gz": (3, 10000, "bef4ecab320f06d8554ea6380940ec79"),
}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """A gzipped IDX file (unsigned bytes) as an array; ValueError if it is not a complete one."""
    try:
        raw = gzip.decompress(path.read_bytes())  # checks the gzip CRC-32 and length
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"not a complete gzip file ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes (bad magic number)")
    rank = raw[3]
    header = 4 + 4 * rank
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes after decompression, the IDX header promises {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _check_fashion(path: pathlib.Path) -> None:
    rank = FASHION_FILES[path.name][0]
    arr = read_idx(path)
    if arr.ndim != rank:
        raise ValueError(f"IDX rank {arr.ndim}, expected {rank}")
    if rank == 1 and arr.size and arr.max() > 9:
        raise ValueError(f"label {int(arr.max())} outside 0..9")
    if rank == 3 and arr.shape[1:] != (28, 28):
        raise ValueError(f"images of {arr.shape[1:]}, expected 28x28")
    pair = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    if rank == 3 and pair.is_file():
        n = read_idx(pair).shape[0]
        if n != arr.shape[0]:
            raise ValueError(f"{arr.shape[0]} images but {n} labels in {pair.name}")


def _fetch_fashion(folder: pathlib.Path, names: list[str]) -> None:
    for name in names:
        tmp = staging.download(staging.source(FASHION_BASE + name, f"fashion-mnist/{name}"), folder)
        try:
            _, count, md5 = FASHION_FILES[name]
            if read_idx(tmp).shape[0] == count and staging.md5(tmp) != md5:  # the published file: its MD5
                raise ValueError(f"{name}: MD5 {staging.md5(tmp)} is not the published {md5}")
            os.replace(tmp, folder / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def load_fashion_mnist():
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays from the staged files (no download)."""
    ds = DATASETS["fashion_mnist"]
    folder = staging.staged(ds)
    a = {name: read_idx(folder / name) for name in ds.files}
    return ((a["train-images-idx3-ubyte.gz"], a["train-labels-idx1-ubyte.gz"]),
            (a["t10k-images-idx3-ubyte.gz"], a["t10k-labels-idx1-ubyte.gz"]))


# CIFAR-10, binary version: one label byte + 3072 channel-major pixel bytes per record.
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR_ARCHIVE_BYTES, CIFAR_ARCHIVE_MD5 = 170_052_171, "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3


def read_cifar_bin(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8, labels (N,) int32) of one CIFAR-10 .bin file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR_RECORD_BYTES:
        raise ValueError(f"{raw.size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records")
    rec = raw.reshape(-1, CIFAR_RECORD_BYTES)
    if rec[:, 0].max() > 9:
        raise ValueError(f"label {int(rec[:, 0].max())} outside 0..9")
    return rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rec[:, 0].astype("int32")


def _check_cifar(path: pathlib.Path) -> None:
    read_cifar_bin(path)


def _fetch_cifar(folder: pathlib.Path, names: list[str]) -> None:
    archive = staging.download(staging.source(CIFAR_URL, CIFAR_ARCHIVE), folder)
    try:
        if archive.stat().st_size == CIFAR_ARCHIVE_BYTES and staging.md5(archive) != CIFAR_ARCHIVE_MD5:  # published
            raise ValueError(f"{CIFAR_ARCHIVE}: MD5 is not the published {CIFAR_ARCHIVE_MD5}")
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:  # only the named regular members; no path from the archive is trusted
                member = tar.getmember(f"cifar-10-batches-bin/{name}")
                if not member.isfile():
                    raise ValueError(f"{member.name} in the archive is not a regular file")
                src = tar.extractfile(member)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    _check_cifar(pathlib.Path(tmp))
                    os.replace(tmp, folder / name)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
    except KeyError as e:
        raise ValueError(f"{CIFAR_ARCHIVE} lacks {e}") from None
    finally:
        archive.unlink()


def load_cifar10():
    """((x_train, y_train), (x_test, y_test)): uint8 images (N, 32, 32, 3), int32 labels (no download)."""
    folder = staging.staged(DATASETS["cifar10"])
    parts = [read_cifar_bin(folder / f) for f in CIFAR_FILES[:5]]
    x_va, y_va = read_cifar_bin(folder / "test_batch.bin")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), (x_va, y_va)



DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("fashion_mnist", "Fashion-MNIST", "fashion-mnist", tuple(FASHION_FILES), _check_fashion,
            _fetch_fashion, "fashion_mnist_cnn"),
    Dataset("cifar10", "CIFAR-10 binary", "cifar-10-batches-bin", CIFAR_FILES, _check_cifar, _fetch_cifar,
            "cifar10_resnet20"),
)}
