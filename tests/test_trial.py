import json
import subprocess
import sys

from bench.trial import Trial


def make(**kw):
    base = dict(workload="digits_mlp", regularizers=(("l2", {"l2": 1e-4}),), precision="float32", batch_size=64)
    base.update(kw)
    return Trial(**base)


def test_id_is_stable_across_processes():
    t = make()
    code = ("from bench.trial import Trial; "
            "print(Trial(workload='digits_mlp', regularizers=(('l2', {'l2': 1e-4}),), "
            "precision='float32', batch_size=64).trial_id)")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"}, check=True)
        assert out.stdout.strip() == t.trial_id


def test_id_changes_with_what_is_measured_and_cell_ignores_repeat():
    a, b = make(), make(repeat=1, seed=1)
    assert a.trial_id != b.trial_id and a.cell_id == b.cell_id
    assert make(regularizers=(("l2", {"l2": 1e-3}),)).trial_id != a.trial_id
    assert make(precision="mixed_bfloat16").cell_id != a.cell_id
    assert make(timeout_s=5).trial_id == a.trial_id  # a timeout does not change what is measured


def test_round_trip_and_readable_slug():
    t = make(regularizers=(("dropout", {"rate": 0.5}), ("batch_norm", {})))
    assert Trial.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert t.setting == "dropout(rate=0.5)+batch_norm"
    assert t.trial_id.startswith("digits_mlp-dropout_rate0.5_batch_norm-float32-b64")
    assert make(regularizers=()).setting == "none"


def test_model_options_are_part_of_the_id_and_absent_when_none():
    t = make()
    assert "model" not in t.to_dict()
    assert t.trial_id == "digits_mlp-l2-float32-b64-te-r0-e3e76b2654"  # the id before Trial had `model`
    small = make(workload="transformer_encoder", model={"layers": 2, "width": 32})
    assert small.trial_id != make(workload="transformer_encoder", model={"layers": 4, "width": 32}).trial_id
    assert Trial.from_dict(json.loads(json.dumps(small.to_dict()))).model == {"layers": 2, "width": 32}
