"""User code named in a suite: a workload or regularizer module from outside the package.

A suite names it by `path` (a .py file, relative to the suite file) or `module` (a dotted name
importable on the driver and on every node). Its *ref* is plain data carried by each trial:

    {"path": "/abs/my_model.py"} or {"module": "mypkg.models.tiny"}, plus
    "sha256": the source file's hash, "files": {relative name: sha256} (DATA_FILES, path only)

The trial process re-imports the module from its ref (`activate`) and fails the trial with a
clear reason when the source no longer has the planned hash. On Ray, each node receives the
files of path modules from the driver (`bundle` -> `stage`, through the object store) into a
content-addressed folder under the data root, checked by hash, and the trial process imports
that copy; `module` refs are imported by name on every node (their installation is the user's).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pathlib
import socket
import sys
import tempfile
import types

from bench.errors import UserError

STAGED = "regbench-user"  # folder under the data root (bench/staging.py roots) holding staged user files


class UserCodeChanged(RuntimeError):
    """The module a trial was planned with is not the one on this node."""


def sha256_file(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _import_file(path: pathlib.Path, sha: str) -> types.ModuleType:
    """Import the file at `path` under a name unique to its content (two versions never share one)."""
    name = f"regbench_user_{''.join(c if c.isalnum() else '_' for c in path.stem)}_{sha[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _data_files(module, folder: pathlib.Path, where: str) -> dict:
    """DATA_FILES {name relative to the module: sha256}, checked for shape and present with that hash."""
    files = getattr(module, "DATA_FILES", None) or {}
    if not isinstance(files, dict):
        raise UserError(f"{where}: DATA_FILES must be a mapping {{file relative to the module: sha256}}")
    for rel, sha in files.items():
        p = pathlib.PurePosixPath(str(rel))
        if p.is_absolute() or ".." in p.parts or not isinstance(sha, str) or len(sha) != 64:
            raise UserError(f"{where}: DATA_FILES[{rel!r}]: expected a path inside the module's folder and a "
                            "64-hex-digit sha256")
        real = folder / p
        if not real.is_file():
            raise UserError(f"{where}: DATA_FILES[{rel!r}]: {real} does not exist")
        if sha256_file(real) != sha.lower():
            raise UserError(f"{where}: DATA_FILES[{rel!r}]: {real} has sha256 {sha256_file(real)}, not the declared "
                            f"{sha.lower()}")
    return {str(k): v.lower() for k, v in files.items()}


def resolve(spec: dict, base_dir: pathlib.Path, where: str) -> tuple[dict, types.ModuleType]:
    """The (ref, module) of a suite entry with `path` or `module`; UserError naming `where` and the field."""
    if "path" in spec:
        raw = spec["path"]
        field = f"{where}.path"
        if not isinstance(raw, str) or not raw:
            raise UserError(f"{field}: {raw!r} is not a file path")
        path = (base_dir / raw).resolve()
        if not path.is_file():
            raise UserError(f"{field}: {path} does not exist")
        sha = sha256_file(path)
        try:
            module = _import_file(path, sha)
        except Exception as e:  # noqa: BLE001 - the user's import: one line
            raise UserError(f"{field}: {path} does not import ({_one_line(e)})") from None
        return {"path": str(path), "sha256": sha, "files": _data_files(module, path.parent, field)}, module
    raw, field = spec["module"], f"{where}.module"
    if not isinstance(raw, str) or not all(part.isidentifier() for part in raw.split(".")):
        raise UserError(f"{field}: {raw!r} is not a dotted module name")
    try:
        module = importlib.import_module(raw)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{field}: {raw} does not import ({_one_line(e)})") from None
    origin = getattr(module, "__file__", None)
    if not origin:
        raise UserError(f"{field}: {raw} has no source file to hash")
    return {"module": raw, "sha256": sha256_file(origin)}, module


def source_name(ref: dict) -> str:
    return ref.get("path") or ref["module"]


def staged_dir(sha: str) -> pathlib.Path:
    """Where `stage` puts the files of the module whose source hashes to `sha`, on this node."""
    from bench.staging import roots

    return roots()[0] / STAGED / sha[:24]


def activate(ref: dict) -> tuple[types.ModuleType, str]:
    """Import the module of `ref` in a trial process, from the copy staged on this node if there
    is one, else from its path or name; (module, where it was loaded from). UserCodeChanged when
    the source is not the planned one."""
    sha = ref["sha256"]
    if "path" in ref:
        staged = staged_dir(sha) / pathlib.Path(ref["path"]).name
        path = staged if staged.is_file() else pathlib.Path(ref["path"])
        if not path.is_file():
            raise UserCodeChanged(f"user code {ref['path']} is not on this node ({socket.gethostname()})")
        found = sha256_file(path)
        if found != sha:
            raise UserCodeChanged(f"user code {path} changed since the run was planned (sha256 {found[:12]}, "
                                  f"planned {sha[:12]}); plan the run again")
        return _import_file(path, sha), str(path)
    module = importlib.import_module(ref["module"])
    found = sha256_file(module.__file__)
    if found != sha:
        raise UserCodeChanged(f"user code {ref['module']} ({module.__file__}) changed since the run was planned "
                              f"(sha256 {found[:12]}, planned {sha[:12]}) or differs on {socket.gethostname()}")
    return module, module.__file__


def refs_of(trials) -> list[dict]:
    """Every distinct ref the trials carry (workloads and regularizers), in a fixed order."""
    out = {}
    for t in trials:
        user = t.user_code or {}
        for ref in [user.get("workload"), *(user.get("regularizers") or {}).values()]:
            if ref:
                out[ref["sha256"]] = {k: ref[k] for k in ("path", "module", "sha256", "files") if k in ref}
    return [out[k] for k in sorted(out)]


def bundle(refs: list[dict]) -> dict:
    """{sha256: {relative name: bytes}}: the files of each path ref (source and DATA_FILES), read
    on the driver and checked against their hashes, to send to the nodes."""
    out = {}
    for ref in refs:
        if "path" not in ref:
            continue
        src = pathlib.Path(ref["path"])
        files = {src.name: (src, ref["sha256"]), **{rel: (src.parent / rel, h) for rel, h in ref.get("files", {}).items()}}
        out[ref["sha256"]] = {}
        for rel, (p, h) in files.items():
            data = p.read_bytes()
            if hashlib.sha256(data).hexdigest() != h:
                raise UserError(f"{p} changed since the run was planned; plan the run again")
            out[ref["sha256"]][rel] = data
    return out


def stage(files_by_sha: dict) -> dict:
    """On one node: write each bundle's files into staged_dir(sha) (atomically, each checked by hash
    once written), or find them there already. Returns {sha256[:12]: "staged" | "verified"}."""
    out = {}
    for sha, files in files_by_sha.items():
        folder = staged_dir(sha)
        state = "verified"
        for rel, data in files.items():
            dest = folder / rel
            want = hashlib.sha256(data).hexdigest()
            if dest.is_file() and sha256_file(dest) == want:
                continue
            state = "staged"
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, dest)
            except OSError as e:
                raise UserError(f"{socket.gethostname()}: cannot stage user file {rel} in {folder} "
                                f"({e.strerror or e})") from None
            if sha256_file(dest) != want:
                raise UserError(f"{socket.gethostname()}: user file {dest} does not match its sha256 after staging")
        out[sha[:12]] = state
    return out
