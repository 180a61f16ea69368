"""Hostile input through the real CLI: a suite name aimed outside --out, a read-only or impossible
--out, YAML bombs and deep nesting, trial files nested 100,000 deep or of the wrong type. Each is
one line on stderr and exit 2 (input) or 1 (storage), never a traceback, and nothing is written
outside --out; one bad trial file in a good run is a warning and the report goes on."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from tests.conftest import regbench, write_suite
from tests.fixtures import synthetic_runs as synthetic
from tests.test_suite_input import BASE, bomb

TINY = dict(workloads=[{"name": "digits_mlp", "max_train_samples": 256}], epochs=1, paired=False)


def one_line(proc, code: int, *needles) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("regbench: error: "), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def tree(root: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["../../../escaped", "/tmp/regbench-absolute-escape"])
def test_a_suite_name_cannot_write_outside_out(tmp_path, name):
    suite = write_suite(tmp_path / "s.yaml", name=name, **TINY)
    (tmp_path / "a" / "b").mkdir(parents=True)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "a" / "b", timeout=300)
    one_line(proc, 2, "s.yaml: name:")
    assert tree(tmp_path) == ["a", "a/b", "s.yaml"]  # nothing written, inside --out or out of it
    assert not pathlib.Path("/tmp/regbench-absolute-escape").exists()


def test_a_symlinked_out_holds_the_run_and_its_report(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    suite = write_suite(tmp_path / "s.yaml", name="linked", **TINY)
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmp_path / "link", check=True)
    run = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    assert run.resolve().parent == target.resolve()
    assert (target / run.name / "manifest.json").is_file() and (target / run.name / "report" / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "s.yaml", "target"]


def test_an_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    suite = write_suite(tmp_path / "s.yaml", **TINY)
    one_line(regbench("run", "--suite", suite, "--out", tmp_path / "file" / "sub"), 2, str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_a_read_only_out_is_one_line(tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mnt)], check=True)
    try:
        suite = write_suite(tmp_path / "s.yaml", **TINY)
        for out in (mnt, mnt / "sub" / "dir"):
            proc = regbench("run", "--suite", suite, "--executor", "process", "--out", out)
            one_line(proc, 1, str(mnt), "read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_yaml_bombs_deep_suites_and_duplicate_keys_are_one_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BASE + "description:\n  " + bomb(9).replace("\n", "\n  ").rstrip() + "\n")
    one_line(regbench("validate", path, timeout=120), 2, str(path), "aliases expand")
    one_line(regbench("run", "--suite", path, "--out", tmp_path / "out", timeout=120), 2, "aliases expand")
    assert not (tmp_path / "out").exists()
    deep = tmp_path / "deep.yaml"
    deep.write_text(BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line(regbench("validate", deep, timeout=120), 2, str(deep), "nested deeper than")
    dup = tmp_path / "dup.yaml"
    dup.write_text(BASE + "epochs: 5\n")
    one_line(regbench("validate", dup, timeout=120), 2, str(dup), "duplicate key 'epochs'", "line 7")


def test_deep_and_wrongly_typed_trial_files(tmp_path):
    """validate names each bad file (exit 2); report and compare warn about it and go on."""
    run = synthetic.write_run(tmp_path / "run", settings={"none": (1, 1, 0), "l2": (1.2, 1, 0.01)}, repeats=2,
                              precisions={"float32": 1.0})
    deep, typed = run / "trials" / "deep.json", run / "trials" / "typed.json"
    good = json.loads(sorted((run / "trials").iterdir())[0].read_text())
    deep.write_text("[" * 100_000 + "]" * 100_000)
    typed.write_text(json.dumps({**good, "trial_id": "typed", "timing": {**good["timing"], "train_s": "long"}}))

    proc = regbench("validate", deep, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"{deep}: nested deeper than 100 levels", proc.stdout
    proc = regbench("validate", run, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{deep}: nested deeper than" in proc.stdout and f"{typed}: timing.train_s" in proc.stdout

    for proc in (regbench("report", run, timeout=300),
                 regbench("compare", run, run, "--by", "run", "--out", tmp_path / "cmp", timeout=300)):
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert f"warning: {deep}: nested deeper than" in proc.stderr, proc.stderr
        assert f"warning: {typed}: wrong type: timing.train_s" in proc.stderr, proc.stderr

    (run / "manifest.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    one_line(regbench("report", run, timeout=120), 2, str(run / "manifest.json"), "nested deeper than")
