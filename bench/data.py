"""Dataset staging: each workload's files present and verified on this node before any trial runs.

Fashion-MNIST (`fashion-mnist/*.gz`, the four gzipped IDX files keras.datasets reads) and CIFAR-10
(`cifar-10-batches-bin/*.bin`, the binary version) live under a data root: `$REGBENCH_DATA_DIR` when
set (shared storage: every node sees one copy), else `$KERAS_HOME/datasets` (`~/.keras/datasets`).
Files already present under either root are used; fetching writes to the first.

`prepare(workload_names)` is what an executor calls once per node before the first trial: under an
fcntl lock per dataset and root (so eight trial processes or eight nodes on one NFS share fetch
once), it verifies what is there and fetches what is missing or corrupted, or raises UserError with
one line naming this node and the dataset. A trial's load() only reads (`load_fashion_mnist`,
`load_cifar10`): it never downloads.

Verification: every file is parsed in full (gzip CRC and length, IDX header against the payload,
CIFAR record size and label range). A download whose size is the published one must match the
published MD5. A verified folder gets `.regbench-verified.json` (size and SHA-256 per file); later
checks compare against it, so a file changed afterwards (a bit flip in raw CIFAR pixels passes any
structural check) is reported as corrupted and, by `prepare`, fetched again.

Sources: the datasets' own hosts, or `$REGBENCH_DATA_MIRROR` (an http(s):// or file:// base holding
`fashion-mnist/<file>.gz` and `cifar-10-binary.tar.gz`) for clusters without internet.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import gzip
import hashlib
import json
import os
import pathlib
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.request
import zlib
from typing import Callable

import numpy as np

from bench.errors import UserError

MANIFEST = ".regbench-verified.json"
FETCH_ATTEMPTS = 3
FETCH_TIMEOUT_S = 60.0


class DataMissing(FileNotFoundError):
    """A workload's files are not staged on this node (a trial never fetches them itself)."""


class FetchError(OSError):
    """A download that failed after its retries; str() is the URL and the last error."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str  # what workloads declare in DATASET
    title: str
    folder: str  # under a data root
    files: tuple[str, ...]
    check: Callable[[pathlib.Path], None]  # raises ValueError(problem) for one file
    fetch: Callable[[pathlib.Path, list[str]], None]  # writes the named files into the folder
    workload_hint: str  # for messages: the workload that needs it


# ---- where ---------------------------------------------------------------------------------------

def keras_home() -> pathlib.Path:
    """Keras' cache folder, as keras.src.backend.config computes it (without importing Keras)."""
    if os.environ.get("KERAS_HOME"):
        return pathlib.Path(os.environ["KERAS_HOME"]).expanduser()
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return pathlib.Path(base) / ".keras"


def roots() -> list[pathlib.Path]:
    """Data roots in lookup order; the first is where fetched files go."""
    out = []
    if os.environ.get("REGBENCH_DATA_DIR"):
        out.append(pathlib.Path(os.environ["REGBENCH_DATA_DIR"]).expanduser())
    out.append(keras_home() / "datasets")
    return out


def locate(ds: Dataset) -> pathlib.Path | None:
    """The first folder (in root order) holding every file of `ds`, else None."""
    for root in roots():
        folder = root / ds.folder
        if all((folder / f).is_file() for f in ds.files):
            return folder
    return None


def for_workloads(names=None) -> list[Dataset]:
    """The datasets the named workloads read (all of them when `names` is empty), in a fixed order."""
    import difflib

    from bench.workloads import WORKLOADS

    names = list(names or WORKLOADS)
    wanted = []
    for name in names:
        if name not in WORKLOADS:
            match = difflib.get_close_matches(str(name), list(WORKLOADS), n=1, cutoff=0.5)
            hint = f" (did you mean {match[0]!r}?)" if match else f" (known: {', '.join(WORKLOADS)})"
            raise UserError(f"WORKLOAD: unknown workload {name!r}{hint}")
        ds = getattr(WORKLOADS[name], "DATASET", None)
        if ds and ds not in wanted:
            wanted.append(ds)
    return [DATASETS[d] for d in DATASETS if d in wanted]


# ---- verification --------------------------------------------------------------------------------

def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _md5(path: pathlib.Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest(folder: pathlib.Path) -> dict | None:
    try:
        doc = json.loads((folder / MANIFEST).read_text())
        return doc if isinstance(doc, dict) and isinstance(doc.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def _write_manifest(folder: pathlib.Path, ds: Dataset) -> None:
    doc = {"dataset": ds.name, "host": socket.gethostname(),
           "verified_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "files": {f: {"bytes": (folder / f).stat().st_size, "sha256": _sha256(folder / f)} for f in ds.files}}
    try:
        _write_atomic(folder / MANIFEST, json.dumps(doc, indent=1).encode())
    except OSError:
        pass  # a read-only share: verified again next time, nothing lost


def problems(ds: Dataset, folder: pathlib.Path) -> dict[str, str]:
    """{file: problem} for the dataset in `folder` (empty: verified). A file the manifest lists is
    compared with it (size, SHA-256); any other file is parsed in full."""
    manifest = _read_manifest(folder) or {"files": {}}
    bad = {}
    for f in ds.files:
        path = folder / f
        if not path.is_file():
            bad[f] = "missing"
            continue
        want = manifest["files"].get(f)
        if want is None:
            try:
                ds.check(path)
            except ValueError as e:
                bad[f] = str(e)
        elif path.stat().st_size != want.get("bytes"):
            bad[f] = f"{path.stat().st_size} bytes, {want.get('bytes')} when verified ({manifest.get('verified_at')})"
        elif _sha256(path) != want.get("sha256"):
            bad[f] = f"SHA-256 differs from when it was verified ({manifest.get('verified_at')})"
    return bad


def status(ds: Dataset) -> dict:
    """Where `ds` is and whether it verifies; never fetches, never writes."""
    folder = locate(ds)
    if folder is None:
        return {"dataset": ds.name, "state": "missing", "path": str(roots()[0] / ds.folder),
                "problem": f"no complete {ds.folder}/ under {' or '.join(map(str, roots()))} "
                           f"(`regbench data fetch {ds.workload_hint}`)"}
    bad = problems(ds, folder)
    out = {"dataset": ds.name, "state": "corrupted" if bad else "verified", "path": str(folder),
           "bytes": sum((folder / f).stat().st_size for f in ds.files if (folder / f).is_file())}
    if bad:
        out["problem"] = "; ".join(f"{f}: {p}" for f, p in bad.items())
    return out


# ---- staging -------------------------------------------------------------------------------------

_THREAD_LOCK = threading.Lock()  # fcntl locks belong to the process; threads of one process queue here


def _fail(ds: Dataset, why: str):
    why = " ".join(str(why).split())
    raise UserError(f"node {socket.gethostname()}: dataset {ds.name} ({ds.title}) cannot be had: {why}")


def prepare(workload_names=None, fetch: bool = True) -> dict:
    """Make every dataset the named workloads read present and verified on this node.

    Call once per node before any trial runs (concurrent callers on one machine or one shared
    REGBENCH_DATA_DIR are serialized by a file lock; only one fetches). Returns
    {dataset: {"state": "verified" | "fetched", "path", "bytes", "files_fetched", "seconds"}};
    workloads without files (digits_mlp, synthetic_cnn, ...) contribute nothing. fetch=False only
    verifies. Raises UserError, one line naming this host and the dataset, when the data cannot
    be had (no network, no mirror, a read-only root without the files, a corrupted download).
    """
    return {ds.name: _prepare_one(ds, fetch) for ds in for_workloads(workload_names)}


def _prepare_one(ds: Dataset, fetch: bool) -> dict:
    t0 = time.perf_counter()
    root = roots()[0]
    folder = root / ds.folder
    found = locate(ds)
    if found is not None and found != folder and not problems(ds, found):
        return _done(ds, found, "verified", [], t0)  # complete in a later root (KERAS_HOME): used in place
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_file = open(root / f".regbench-{ds.name}.lock", "a+")
    except OSError as e:
        if found is not None and not problems(ds, found):
            return _done(ds, found, "verified", [], t0)  # a read-only root that has everything
        _fail(ds, f"{folder} is incomplete and {root} cannot be written ({e.strerror or e})")
    with _THREAD_LOCK, lock_file:
        fcntl.lockf(lock_file, fcntl.LOCK_EX)  # released when the file closes, or by the kernel if we die
        bad = problems(ds, folder)  # again: another process may have staged it while we waited
        if not bad:
            if _read_manifest(folder) is None:
                _write_manifest(folder, ds)
            return _done(ds, folder, "verified", [], t0)
        listing = ("missing" if set(bad.values()) == {"missing"}
                   else "; ".join(f"{f}: {p}" for f, p in bad.items()))
        if not fetch:
            _fail(ds, f"{folder}: {listing}")
        for f in bad:  # a corrupted file goes before its replacement is fetched
            with contextlib.suppress(FileNotFoundError):
                (folder / f).unlink()
        with contextlib.suppress(FileNotFoundError):
            (folder / MANIFEST).unlink()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ds.fetch(folder, list(bad))
        except (OSError, ValueError, tarfile.TarError) as e:
            _fail(ds, f"{folder}: {listing}; fetching failed: {e if isinstance(e, FetchError) else _reason(e)}")
        still = problems(ds, folder)
        if still:
            _fail(ds, "fetched files do not verify: " + "; ".join(f"{f}: {p}" for f, p in still.items()))
        _write_manifest(folder, ds)
        return _done(ds, folder, "fetched", list(bad), t0)


def _done(ds: Dataset, folder: pathlib.Path, state: str, fetched: list, t0: float) -> dict:
    return {"state": state, "path": str(folder), "files_fetched": fetched,
            "bytes": sum((folder / f).stat().st_size for f in ds.files),
            "seconds": round(time.perf_counter() - t0, 3)}


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)  # urllib.error.URLError wraps the socket error
    text = f"{type(inner).__name__}: {inner}" if inner is not None else f"{type(e).__name__}: {e}"
    return text[:300]


# ---- fetching ------------------------------------------------------------------------------------

def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _download(url: str, dest_dir: pathlib.Path) -> pathlib.Path:
    """url -> a temporary file in dest_dir (the caller renames or removes it); retried with backoff."""
    last: BaseException | None = None
    for attempt in range(FETCH_ATTEMPTS):
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".download.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out, 1 << 20)
            return pathlib.Path(tmp)
        except OSError as e:  # URLError, HTTPError, socket errors, a full disk
            last = e
            os.unlink(tmp)
            if e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES):
                break
            if attempt + 1 < FETCH_ATTEMPTS:
                time.sleep(0.5 * 2 ** attempt)
    raise FetchError(f"{url}: {_reason(last)}")


def _source(default_url: str, mirror_path: str) -> str:
    """default_url, or $REGBENCH_DATA_MIRROR/mirror_path when a mirror is set."""
    mirror = os.environ.get("REGBENCH_DATA_MIRROR")
    return f"{mirror.rstrip('/')}/{mirror_path}" if mirror else default_url


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
        tmp = _download(_source(FASHION_BASE + name, f"fashion-mnist/{name}"), folder)
        try:
            _, count, md5 = FASHION_FILES[name]
            if read_idx(tmp).shape[0] == count and _md5(tmp) != md5:  # the published file: its MD5
                raise ValueError(f"{name}: MD5 {_md5(tmp)} is not the published {md5}")
            os.replace(tmp, folder / name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def load_fashion_mnist():
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays from the staged files (no download)."""
    ds = DATASETS["fashion_mnist"]
    folder = _staged(ds)
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
    archive = _download(_source(CIFAR_URL, CIFAR_ARCHIVE), folder)
    try:
        if archive.stat().st_size == CIFAR_ARCHIVE_BYTES and _md5(archive) != CIFAR_ARCHIVE_MD5:  # published
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
    folder = _staged(DATASETS["cifar10"])
    parts = [read_cifar_bin(folder / f) for f in CIFAR_FILES[:5]]
    x_va, y_va = read_cifar_bin(folder / "test_batch.bin")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), (x_va, y_va)


def _staged(ds: Dataset) -> pathlib.Path:
    folder = locate(ds)
    if folder is None:
        raise DataMissing(
            f"node {socket.gethostname()}: {ds.title} is not staged (looked for {ds.folder}/ in "
            f"{', '.join(map(str, roots()))}); run `regbench data fetch {ds.workload_hint}` "
            "(trials never download)")
    return folder


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("fashion_mnist", "Fashion-MNIST", "fashion-mnist", tuple(FASHION_FILES), _check_fashion,
            _fetch_fashion, "fashion_mnist_cnn"),
    Dataset("cifar10", "CIFAR-10 binary", "cifar-10-batches-bin", CIFAR_FILES, _check_cifar, _fetch_cifar,
            "cifar10_resnet20"),
)}
