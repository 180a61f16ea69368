"""analysis on a real smoke run (made by the regbench CLI), and its HTML report opened in headless Chromium."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow


# smoke_run: the session-wide real smoke run from tests/conftest.py


@pytest.fixture(scope="module")
def smoke_report(smoke_run) -> Path:
    return analysis.write_report(smoke_run)


def test_smoke_run_loads_and_reports(smoke_run, smoke_report):
    data = analysis.load(smoke_run)
    t = data.trials
    assert data.problems.empty, data.problems
    assert set(t["setting"]) >= {"none", "l2", "dropout"}
    ok = t[t["status"] == "ok"]
    assert len(ok) >= 3 and (ok["step_time_p50_s"] > 0).all() and (ok["samples_per_s"] > 0).all()
    assert ok["best_val_accuracy"].between(0, 1).all()
    assert len(data.curves) >= len(ok)  # at least one epoch each
    # mixed_float16 on a CPU is skipped with a reason; listed, not dropped
    not_ok = t[t["status"] != "ok"]
    assert not_ok["reason"].notna().all()
    fails = pd.read_csv(smoke_report.parent / "failures.csv")
    assert set(fails["trial_id"]) == set(not_ok["trial_id"])

    table = analysis.overhead(t)
    st = table[(table["metric"] == "step_time") & (table["precision"] == "float32")]
    assert set(st["setting"]) == {"l2", "dropout"} and np.isfinite(st["estimate"]).all()
    assert (st["mark"] == "too few repeats").all()  # the smoke suite has one repeat

    out = smoke_report.parent
    for png in ("overhead_step_time", "overhead_memory", "accuracy_vs_time", "loss_vs_time", "cost_benefit",
                "precision_speedup"):
        assert (out / f"{png}.png").stat().st_size > 5000, png
    md = (out / "summary.md").read_text()
    assert "## Overhead vs baseline" in md and "| l2 |" in md


def _chromium(*args: str, tmp: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


_IMAGE_CHECK = """<script>
window.addEventListener('load', function () {
  var ok = 0, bad = [];
  for (var i = 0; i < document.images.length; i++) {
    var im = document.images[i];
    if (im.complete && im.naturalWidth > 0 && im.naturalHeight > 0) ok++; else bad.push(im.alt);
  }
  var d = document.createElement('pre');
  d.id = 'image-check';
  d.textContent = 'IMAGES ' + ok + '/' + document.images.length + ' BAD[' + bad.join(',') + ']';
  document.body.appendChild(d);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_in_headless_chromium(smoke_report, tmp_path):
    html = smoke_report.read_text()
    n_images = html.count("<img ")
    assert n_images == 6

    # 1. every <img> decoded: a copy of the page with a checker script, DOM dumped after load
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", _IMAGE_CHECK + "</body>"))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri(), tmp=tmp_path)
    assert f"IMAGES {n_images}/{n_images} BAD[]" in dom.stdout, (dom.stdout[-500:], dom.stderr[-2000:])

    # 2. the page itself renders to a screenshot that is not blank
    shot = tmp_path / "report.png"
    proc = _chromium("--hide-scrollbars", "--window-size=1280,1800", f"--screenshot={shot}", smoke_report.as_uri(),
                     tmp=tmp_path)
    assert shot.exists(), proc.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1200
    non_white = (pixels.mean(axis=2) < 0.9).mean()
    assert pixels.std() > 0.05 and non_white > 0.02, (pixels.std(), non_white)
