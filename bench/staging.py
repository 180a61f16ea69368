"""Dataset staging on one node: the data roots, the per-dataset lock, fetching and verification.

Datasets live under a data root: `$REGBENCH_DATA_DIR` when set (shared storage: every node sees one
copy), else `$KERAS_HOME/datasets` (`~/.keras/datasets`). Files already present under either root
are used; fetching writes to the first.

`stage(ds)` runs under an fcntl lock per dataset and root (so eight trial processes or eight nodes
on one NFS share fetch once): it verifies what is there and fetches what is missing or corrupted,
or raises UserError with one line naming this node and the dataset. `staged(ds)` is what a trial's
loader calls: the folder, or DataMissing (a trial never downloads).

Verification: every file is parsed in full by its format's check (bench/dataset_formats.py). A
verified folder gets `.regbench-verified.json` (size and SHA-256 per file); later checks compare
against it, so a file changed afterwards (a bit flip in raw CIFAR pixels passes any structural
check) is reported as corrupted and, by `stage`, fetched again.

Sources: `source(url, mirror_path)` is the dataset's own host, or `$REGBENCH_DATA_MIRROR` (an
http(s):// or file:// base) for clusters without internet.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
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
from typing import Callable

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

# ---- verification --------------------------------------------------------------------------------

def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def md5(path: pathlib.Path) -> str:
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


def stage(ds: Dataset, fetch: bool) -> dict:
    """Make `ds` present and verified under the data roots (fetch=False: only verify); returns
    {"state": "verified" | "fetched", "path", "bytes", "files_fetched", "seconds"}. Concurrent
    callers on one machine or one shared root are serialized by a file lock; only one fetches."""
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


def download(url: str, dest_dir: pathlib.Path) -> pathlib.Path:
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


def source(default_url: str, mirror_path: str) -> str:
    """default_url, or $REGBENCH_DATA_MIRROR/mirror_path when a mirror is set."""
    mirror = os.environ.get("REGBENCH_DATA_MIRROR")
    return f"{mirror.rstrip('/')}/{mirror_path}" if mirror else default_url


# ---- reading -------------------------------------------------------------------------------------

def staged(ds: Dataset) -> pathlib.Path:
    """The folder holding every file of `ds`, for a trial's loader; DataMissing when it is not staged."""
    folder = locate(ds)
    if folder is None:
        raise DataMissing(
            f"node {socket.gethostname()}: {ds.title} is not staged (looked for {ds.folder}/ in "
            f"{', '.join(map(str, roots()))}); run `regbench data fetch {ds.workload_hint}` "
            "(trials never download)")
    return folder

