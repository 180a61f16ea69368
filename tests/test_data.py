"""Data staging (bench/data.py, bench/staging.py, bench/dataset_formats.py) with real files, real
processes and a real local HTTP mirror.

The tests write tiny files in the real formats: Fashion-MNIST as four gzipped IDX files under
$KERAS_HOME/datasets/fashion-mnist/ (keras.datasets reads them too), CIFAR-10 as the binary
cifar-10-batches-bin/*.bin records, and the tar.gz archive the dataset's site serves.
"""
from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import pathlib
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest

from bench import data, dataset_formats as formats, staging
from bench.errors import UserError
from tests.conftest import ROOT

FASHION = ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
           "t10k-images-idx3-ubyte.gz")


def idx_gz(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes())


def fashion_files(n_train=12, n_test=6, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        out[f"{split}-labels-idx1-ubyte.gz"] = idx_gz(rng.integers(0, 10, n))
        out[f"{split}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (n, 28, 28)))
    return out


def cifar_files(records=4, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in formats.CIFAR_FILES:
        rec = rng.integers(0, 256, (records, formats.CIFAR_RECORD_BYTES)).astype(np.uint8)
        rec[:, 0] = rng.integers(0, 10, records)
        out[name] = rec.tobytes()
    return out


def cifar_archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def write(folder: pathlib.Path, files: dict[str, bytes]) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return folder


def make_mirror(path: pathlib.Path) -> tuple[pathlib.Path, dict, dict]:
    fashion, cifar = fashion_files(seed=1), cifar_files(seed=2)
    write(path / "fashion-mnist", fashion)
    (path / formats.CIFAR_ARCHIVE).write_bytes(cifar_archive(cifar))
    return path, fashion, cifar


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private KERAS_HOME, no REGBENCH_DATA_DIR, no mirror."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("REGBENCH_DATA_DIR", raising=False)
    monkeypatch.delenv("REGBENCH_DATA_MIRROR", raising=False)
    return tmp_path


def clean_env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items()
         if k.lower() not in ("http_proxy", "https_proxy", "all_proxy") and not k.startswith("REGBENCH_DATA")}
    e.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", CUDA_VISIBLE_DEVICES="",
             PYTHONPATH=str(ROOT), **extra)
    return e


# Runs CODE with every outgoing connection (and name lookup) refused, counting the attempts.
BLOCK_NETWORK = """
import socket, sys
attempts = []
def blocked(*args, **kwargs):
    attempts.append(args[1:2])
    raise OSError(101, "Network is unreachable (blocked by the test)")
socket.socket.connect = socket.socket.connect_ex = blocked
socket.create_connection = blocked
def no_dns(*args, **kwargs):
    attempts.append(args[:1])
    raise socket.gaierror(-3, "Temporary failure in name resolution (blocked by the test)")
socket.getaddrinfo = no_dns
import atexit
atexit.register(lambda: print("connection attempts:", len(attempts), file=sys.stderr))
"""


def run_blocked(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_NETWORK + code], capture_output=True, text=True,
                          timeout=120, env=clean_env(**env), cwd=ROOT)


def attempts(proc) -> int:
    return int(proc.stderr.rsplit("connection attempts:", 1)[1].split()[0])


class Mirror(http.server.ThreadingHTTPServer):
    """Serves a folder on 127.0.0.1, counting GETs per path, each answered after `delay_s`."""

    def __init__(self, folder: pathlib.Path, delay_s: float):
        self.folder, self.delay_s, self.hits, self.lock = folder, delay_s, {}, threading.Lock()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with mirror.lock:
                    mirror.hits[self.path] = mirror.hits.get(self.path, 0) + 1
                time.sleep(mirror.delay_s)
                path = mirror.folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                payload = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_concurrent_processes_fetch_once_and_all_see_verified_data(tmp_path):
    """Six processes stage both datasets into one shared REGBENCH_DATA_DIR at once: each file is
    downloaded exactly once (the fcntl lock), every process ends with the same verified data."""
    mirror_dir, fashion, cifar = make_mirror(tmp_path / "mirror")
    shared = tmp_path / "shared"
    go = tmp_path / "go"
    code = ("import json, pathlib, time\n"
            f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.005)\n"
            "from bench.data import prepare\n"
            "print(json.dumps(prepare(['fashion_mnist_cnn', 'cifar10_resnet20'])))\n")
    server = Mirror(mirror_dir, delay_s=0.3)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, cwd=ROOT,
                                  env=clean_env(REGBENCH_DATA_DIR=str(shared), REGBENCH_DATA_MIRROR=server.url,
                                                KERAS_HOME=str(tmp_path / f"keras{i}")))
                 for i in range(6)]
        time.sleep(1.0)  # every process imported and is polling
        go.touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        server.shutdown()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = [json.loads(out) for out, _ in outs]
    # every file requested exactly once over all six processes
    assert server.hits == {f"/fashion-mnist/{f}": 1 for f in FASHION} | {f"/{formats.CIFAR_ARCHIVE}": 1}
    for name in ("fashion_mnist", "cifar10"):
        states = sorted(r[name]["state"] for r in results)
        assert states == ["fetched"] + ["verified"] * 5, (name, states)
        assert {r[name]["path"] for r in results} == {str(shared / formats.DATASETS[name].folder)}
    for f, payload in fashion.items():
        assert (shared / "fashion-mnist" / f).read_bytes() == payload
    for f, payload in cifar.items():
        assert (shared / "cifar-10-batches-bin" / f).read_bytes() == payload
    assert not [p.name for p in shared.rglob("*.tmp")]  # no temporary file left behind


def test_network_blocked_fails_in_one_line_naming_node_and_dataset(tmp_path):
    code = "from bench.cli import main\nsys.exit(main(['data', 'fetch', 'fashion_mnist_cnn']))\n"
    proc = run_blocked(code, KERAS_HOME=str(tmp_path / "keras"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("connection attempts")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"regbench: error: node {socket.gethostname()}: dataset fashion_mnist (Fashion-MNIST) "
                               "cannot be had:")
    assert "blocked by the test" in lines[0] and "raw.githubusercontent.com" in lines[0]
    assert attempts(proc) == staging.FETCH_ATTEMPTS  # retried, then given up
    assert not list((tmp_path / "keras" / "datasets" / "fashion-mnist").iterdir())  # no partial file


def test_network_blocked_staged_data_needs_no_network_and_a_trial_never_downloads(tmp_path):
    """With the files present nothing connects; keras.datasets reads the same files (the real
    format, no hash check); without them a workload's load() fails at once instead of fetching."""
    keras_home = tmp_path / "keras"
    write(keras_home / "datasets" / "fashion-mnist", fashion_files(n_train=12, n_test=6))
    code = ("import json\n"
            "from bench.data import prepare\nfrom bench.dataset_formats import load_fashion_mnist\n"
            "from bench.workloads import cifar10_resnet\n"
            "print(json.dumps(prepare(['fashion_mnist_cnn'])))\n"
            "import keras\n"
            "(a, b), (c, d) = keras.datasets.fashion_mnist.load_data()\n"
            "(a2, b2), (c2, d2) = load_fashion_mnist()\n"
            "assert a.shape == (12, 28, 28) and (a == a2).all() and (b == b2).all() and (c == c2).all() and (d == d2).all()\n"
            "try:\n"
            "    cifar10_resnet.load(0)\n"
            "except FileNotFoundError as e:\n"
            "    print('LOAD:', e)\n")
    proc = run_blocked(code, KERAS_HOME=str(keras_home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[0])["fashion_mnist"]["state"] == "verified"
    load_line = proc.stdout.splitlines()[1]
    assert "CIFAR-10 binary is not staged" in load_line and "regbench data fetch cifar10_resnet20" in load_line
    assert attempts(proc) == 0


def test_corrupted_cache_file_is_reported_then_refetched(env, tmp_path, monkeypatch, capsys):
    from bench.cli import main

    folder = write(tmp_path / "keras" / "datasets" / "fashion-mnist", fashion_files(seed=3))
    assert data.prepare(["fashion_mnist_cnn"], fetch=False)["fashion_mnist"]["state"] == "verified"
    manifest = json.loads((folder / staging.MANIFEST).read_text())
    assert set(manifest["files"]) == set(FASHION)

    bad = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the compressed pixels
    bad.write_bytes(bytes(raw))
    assert main(["data", "verify", "fashion_mnist_cnn"]) == 1
    out = capsys.readouterr().out
    assert f"fashion_mnist: corrupted: {folder}: train-images-idx3-ubyte.gz: SHA-256 differs" in out

    with pytest.raises(UserError) as e:  # no way to fetch: reported, one line, node and dataset named
        data.prepare(["fashion_mnist_cnn"], fetch=False)
    assert str(e.value).startswith(f"node {socket.gethostname()}: dataset fashion_mnist (Fashion-MNIST)")
    assert "train-images-idx3-ubyte.gz: SHA-256 differs" in str(e.value) and "\n" not in str(e.value)

    good = fashion_files(seed=3)
    write(tmp_path / "mirror" / "fashion-mnist", good)
    monkeypatch.setenv("REGBENCH_DATA_MIRROR", (tmp_path / "mirror").as_uri())  # file:// works like http(s)://
    r = data.prepare(["fashion_mnist_cnn"])["fashion_mnist"]
    assert r["state"] == "fetched" and r["files_fetched"] == ["train-images-idx3-ubyte.gz"]  # only the bad one
    assert bad.read_bytes() == good["train-images-idx3-ubyte.gz"]
    assert main(["data", "verify", "fashion_mnist_cnn"]) == 0


def test_structural_checks_without_a_manifest(env, tmp_path):
    folder = write(tmp_path / "keras" / "datasets" / "cifar-10-batches-bin", cifar_files())
    ds = formats.DATASETS["cifar10"]
    assert staging.problems(ds, folder) == {}
    (folder / "data_batch_2.bin").write_bytes((folder / "data_batch_2.bin").read_bytes()[:-5])  # truncated
    rec = bytearray((folder / "test_batch.bin").read_bytes())
    rec[formats.CIFAR_RECORD_BYTES] = 11  # label of the second record
    (folder / "test_batch.bin").write_bytes(bytes(rec))
    found = staging.problems(ds, folder)
    assert set(found) == {"data_batch_2.bin", "test_batch.bin"}
    assert "not a whole number of 3073-byte CIFAR-10 records" in found["data_batch_2.bin"]
    assert "label 11 outside 0..9" in found["test_batch.bin"]

    fm = write(tmp_path / "keras" / "datasets" / "fashion-mnist", fashion_files())
    gz = fm / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-6])  # truncated: gzip's length/CRC trailer is gone
    assert "not a complete gzip file" in staging.problems(formats.DATASETS["fashion_mnist"], fm)[gz.name]


def test_published_count_must_have_the_published_md5(env, tmp_path, monkeypatch):
    """A download with the official 60,000 items that is not the official file is refused."""
    labels = idx_gz(np.random.default_rng(0).integers(0, 10, 60000))  # fetched first: refused at once
    write(tmp_path / "mirror" / "fashion-mnist", {"train-labels-idx1-ubyte.gz": labels})
    monkeypatch.setenv("REGBENCH_DATA_MIRROR", (tmp_path / "mirror").as_uri())
    with pytest.raises(UserError, match="MD5 [0-9a-f]+ is not the published 25c81989df183df01b3e8a0aad5dffbe"):
        data.prepare(["fashion_mnist_cnn"])
    assert not list((tmp_path / "keras" / "datasets" / "fashion-mnist").iterdir())


def test_data_dir_first_keras_home_used_in_place_and_where(env, tmp_path, monkeypatch, capsys):
    from bench.cli import main

    write(tmp_path / "keras" / "datasets" / "fashion-mnist", fashion_files())
    shared = tmp_path / "shared"
    monkeypatch.setenv("REGBENCH_DATA_DIR", str(shared))
    r = data.prepare(["fashion_mnist_cnn", "digits_mlp", "synthetic_cnn", "transformer_encoder"])
    assert list(r) == ["fashion_mnist"] and r["fashion_mnist"]["path"] == str(tmp_path / "keras" / "datasets" / "fashion-mnist")
    assert main(["data", "where"]) == 0
    out = capsys.readouterr().out
    assert f"data roots (lookup order; fetch writes to the first): {shared}, {tmp_path / 'keras' / 'datasets'}" in out
    assert "cifar10: missing" in out
    assert main(["data", "verify", "nope"]) == 2
    assert "unknown workload 'nope'" in capsys.readouterr().err


TRAIN_ON_STAGED = """
import json
import numpy as np
from bench.runner import run_trial
from bench.trial import Trial
from bench.workloads import cifar10_resnet, fashion_mnist_cnn

out = {}
for name, module in (("fashion_mnist_cnn", fashion_mnist_cnn), ("cifar10_resnet20", cifar10_resnet)):
    d = module.load(0)
    np.savez(OUT + "/" + name + ".npz", x_train=d.x_train, y_train=d.y_train, x_val=d.x_val, y_val=d.y_val)
    r = run_trial(Trial(workload=name, regularizers=(("l2", {"l2": 1e-4}),), precision="float32", batch_size=8,
                        epochs=2, cpu_threads=1), gpu=False)
    out[name] = {"status": r["status"], "reason": r["reason"], "timing": r.get("timing"),
                 "convergence": {k: v for k, v in (r.get("convergence") or {}).items() if k != "curve"}}
print("RESULT " + json.dumps(out))
"""


def test_real_format_files_load_exactly_and_train(tmp_path):
    """Defect caught: a loader that reads the real formats wrongly (CIFAR-10's channel-major records
    transposed wrongly, labels off by a byte, train and test swapped, batches out of order) yet
    does not fail; or a staged dataset a trial cannot train on. Tiny files in the real formats,
    written here, go through each workload's load() and one real two-epoch trial each, offline."""
    keras_home = tmp_path / "keras"
    rng = np.random.default_rng(7)
    fashion = {"train": (rng.integers(0, 256, (32, 28, 28)), rng.integers(0, 10, 32)),
               "t10k": (rng.integers(0, 256, (16, 28, 28)), rng.integers(0, 10, 16))}
    files = {}
    for split, (images, labels) in fashion.items():
        files[f"{split}-images-idx3-ubyte.gz"], files[f"{split}-labels-idx1-ubyte.gz"] = idx_gz(images), idx_gz(labels)
    write(keras_home / "datasets" / "fashion-mnist", files)
    cifar = {}
    for name in formats.CIFAR_FILES:
        rec = rng.integers(0, 256, (8, formats.CIFAR_RECORD_BYTES)).astype(np.uint8)
        rec[:, 0] = rng.integers(0, 10, 8)
        cifar[name] = rec
    write(keras_home / "datasets" / "cifar-10-batches-bin", {n: r.tobytes() for n, r in cifar.items()})

    proc = run_blocked(f"OUT = {str(tmp_path)!r}\n" + TRAIN_ON_STAGED, KERAS_HOME=str(keras_home),
                       KERAS_BACKEND="tensorflow")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts(proc) == 0  # nothing was downloaded or even looked up
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])

    f = np.load(tmp_path / "fashion_mnist_cnn.npz")
    np.testing.assert_array_equal(f["x_train"], (fashion["train"][0] / 255.0).astype("float32")[..., None])
    np.testing.assert_array_equal(f["y_train"], fashion["train"][1])
    np.testing.assert_array_equal(f["x_val"], (fashion["t10k"][0] / 255.0).astype("float32")[..., None])
    np.testing.assert_array_equal(f["y_val"], fashion["t10k"][1])

    def pixels(records):  # record: label byte, then 1024 red, 1024 green, 1024 blue bytes, row-major
        return (records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) / 255.0).astype("float32")

    c = np.load(tmp_path / "cifar10_resnet20.npz")
    train = np.concatenate([cifar[f"data_batch_{i}.bin"] for i in range(1, 6)])
    np.testing.assert_array_equal(c["x_train"], pixels(train))
    assert c["x_train"][3, 5, 7, 2] == np.float32(train[3, 1 + 2 * 1024 + 5 * 32 + 7] / 255.0)  # blue of row 5, col 7
    np.testing.assert_array_equal(c["y_train"], train[:, 0])
    np.testing.assert_array_equal(c["x_val"], pixels(cifar["test_batch.bin"]))
    np.testing.assert_array_equal(c["y_val"], cifar["test_batch.bin"][:, 0])

    for name, n_train in (("fashion_mnist_cnn", 32), ("cifar10_resnet20", 40)):
        r = result[name]
        assert r["status"] == "ok", r
        steps = n_train // 8
        assert r["timing"]["steps_run"] == 2 * steps and r["timing"]["steady_state_steps"] == steps - 1
        conv = r["convergence"]
        assert conv["applicable"] and conv["epochs_run"] == 2 and 0 <= conv["final_val_accuracy"] <= 1
