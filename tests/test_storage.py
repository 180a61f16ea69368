"""A run directory that cannot be written (full disk, read-only file system) is one line and a
non-zero exit, never a traceback; no temporary file is left behind; every finished trial stays
intact; `--resume` finishes the run once there is space. Uses real tmpfs mounts (CI runs as root)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess

import pytest

from tests.conftest import regbench, write_suite

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _remount(mnt, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def _one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("regbench: error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def _leftovers(root: pathlib.Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def test_full_disk_is_one_line_keeps_finished_trials_and_resumes(tmp_path, tmpfs):
    # 6 trials of ~10 KiB each and their logs: a 64 KiB tmpfs fills up in the middle of the run
    suite = write_suite(tmp_path / "s.yaml", regularizers=["none", "l2", "dropout"], repeats=2, epochs=1,
                        paired=False, cpus_per_trial=1, isolation="cpu")
    proc = regbench("run", "--suite", suite, "--executor", "process", "--out", tmpfs, "--no-report")
    line = _one_line_error(proc)
    assert "no space left on the device" in line and "--resume" in line
    run = pathlib.Path(line.rsplit("--resume ", 1)[1].strip())
    assert not _leftovers(tmpfs)
    finished = sorted((run / "trials").glob("*.json"))
    for path in finished:  # every file that exists is a whole, valid record
        assert json.loads(path.read_text())["trial_id"] == path.stem
    _remount(tmpfs, "size=16m")
    done = regbench("run", "--resume", run, "--executor", "process", "--no-report", check=True)
    assert "done:" in done.stderr
    records = sorted((run / "trials").glob("*.json"))
    assert len(records) == 6 and set(map(str, finished)) <= set(map(str, records))
    check = regbench("validate", run)
    assert check.returncode == 0, check.stdout + check.stderr


def test_read_only_run_directory_is_one_line(tmp_path, tmpfs):
    _remount(tmpfs, "size=16m")
    suite = write_suite(tmp_path / "s.yaml", paired=False)
    first = regbench("run", "--suite", suite, "--executor", "process", "--out", tmpfs, "--no-report", check=True)
    run = pathlib.Path(first.stdout.strip().splitlines()[-1])
    (run / "trials" / next(iter(os.listdir(run / "trials")))).unlink()  # one trial left to do
    _remount(tmpfs, "ro")
    proc = regbench("run", "--resume", run, "--executor", "process", "--no-report")
    assert "read-only file system" in _one_line_error(proc)
    proc = regbench("report", run)
    assert "read-only file system" in _one_line_error(proc)
