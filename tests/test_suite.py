import pytest

from bench import suite as S
from bench.errors import UserError
from bench.regularizers import REGISTRY
from tests.conftest import write_suite


def parse(tmp_path, **fields):
    path = write_suite(tmp_path / "s.yaml", **fields)
    return S.load(str(path))


def error(tmp_path, **fields) -> str:
    with pytest.raises(UserError) as e:
        parse(tmp_path, **fields)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "s.yaml") in msg
    return msg


def test_expansion_interleaves_repeats_and_pairs_cells(tmp_path):
    s = parse(tmp_path, regularizers=["none", "l2", ["dropout", "batch_norm"]],
              precisions=["float32", "mixed_bfloat16"], batch_sizes=[32, 64], repeats=3)
    assert len(s.trials) == 3 * 2 * 2 * 3
    reps = [t.repeat for t in s.trials]
    assert reps == sorted(reps)  # all of repeat 0, then all of repeat 1, ...
    first, second = s.trials[: len(s.trials) // 3], s.trials[len(s.trials) // 3: 2 * len(s.trials) // 3]
    # every repeat runs every cell once, each repeat in its own seeded random order
    assert sorted(t.cell_id for t in first) == sorted(t.cell_id for t in second)
    assert [t.cell_id for t in first] != [t.cell_id for t in second]
    again = parse(tmp_path, regularizers=["none", "l2", ["dropout", "batch_norm"]],
                  precisions=["float32", "mixed_bfloat16"], batch_sizes=[32, 64], repeats=3)
    assert [t.trial_id for t in again.trials] == [t.trial_id for t in s.trials]  # the order is seeded
    assert len({t.trial_id for t in s.trials}) == len(s.trials)
    assert {t.seed for t in s.trials} == {0, 1, 2}
    assert {t.setting for t in s.trials} == {"none", "l2", "dropout+batch_norm"}


@pytest.mark.parametrize("fields,expected", [
    ({"regularizers": ["none", "dropot"]}, "regularizers[1]: unknown regularizer 'dropot' (did you mean 'dropout'?)"),
    ({"regularizers": [{"dropout": {"rate": 1.5}}]}, "regularizers[0].dropout.rate: 1.5 is out of range"),
    ({"batch_sizes": [0]}, "batch_sizes[0]: 0 is out of range"),
    ({"precisions": ["mixed_float61"]}, "precisions[0]: unknown value 'mixed_float61' (did you mean 'mixed_float16'?)"),
    ({"workloads": ["digit_mlp"]}, "workloads[0].name: unknown value 'digit_mlp' (did you mean 'digits_mlp'?)"),
    ({"regularizers": []}, "regularizers: is empty"),
    ({"repeat": 3}, "unknown key 'repeat' (did you mean 'repeats'?)"),
    ({"regularizers": [["none", "l2"]]}, "regularizers[0][0]: 'none' cannot be part of a combination"),
    ({"regularizers": ["l2", {"l2": {"l2": 1e-4}}]}, "regularizers: setting 'l2' is listed twice"),
    ({"regularizers": [["l2", "l2"]]}, "l2 appears twice in one combination"),
    ({"epochs": "ten"}, "epochs: 'ten' is not an integer"),
    ({"workloads": [{"name": "digits_mlp", "target_val_accuracy": 1.5}]}, "target_val_accuracy: 1.5 is not in (0, 1]"),
])
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, fields, expected):
    assert expected in error(tmp_path, **fields)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nregularizers: [l2\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML at line \d+, column \d+"):
        S.load(str(bad))
    with pytest.raises(UserError, match="nope.yaml: file not found"):
        S.load(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="unknown suite 'quik' \\(did you mean 'quick'\\?\\)"):
        S.load("quik")
    missing = tmp_path / "m.yaml"
    missing.write_text("name: x\nworkloads: [digits_mlp]\n")
    with pytest.raises(UserError, match="missing required key 'regularizers'"):
        S.load(str(missing))


CLASSIC = {"l1", "l2", "l1l2", "elastic_net", "dropout", "batch_norm", "augmentation", "early_stopping"}


def test_builtin_suites_cover_the_mission():
    for name in S.builtin_names():
        S.load(name)
    quick = S.load("quick")
    names = {n for t in quick.trials for n, _ in t.regularizers}
    assert names == CLASSIC  # every classic regularizer on the digits MLP
    assert {"none"} <= {t.setting for t in quick.trials}
    assert {t.precision for t in quick.trials} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert len({t.repeat for t in quick.trials}) >= 3
    full = S.load("full")
    assert len({t.workload for t in full.trials}) == 6 and len({t.repeat for t in full.trials}) == 5
    assert {n for t in full.trials for n, _ in t.regularizers} == set(REGISTRY)
    assert min(len({t.batch_size for t in full.trials if t.workload == w}) for w in {t.workload for t in full.trials}) >= 2
    assert S.load("smoke", backend="jax").trials[0].backend == "jax"


def test_gpu_suite_is_the_new_workloads_by_every_applicable_regularizer():
    from bench.regularizers import not_applicable, normalize
    from bench.workloads import WORKLOADS

    gpu = S.load("gpu")
    assert {t.workload for t in gpu.trials} == {"transformer_encoder", "resnet50", "synthetic_cnn"}
    assert {t.precision for t in gpu.trials} == {"float32", "mixed_float16", "mixed_bfloat16"}
    assert gpu.device == "gpu" and {t.jit_compile for t in gpu.trials} == {"auto"}
    new = {"weight_decay", "label_smoothing", "mixup", "cutmix", "spatial_dropout", "max_norm", "stochastic_depth"}
    for w in ("transformer_encoder", "resnet50", "synthetic_cnn"):
        ran = {n for t in gpu.trials if t.workload == w for n, _ in t.regularizers}
        applicable = {n for n in new | {"l2", "dropout", "dropout_no_attention", "batch_norm", "augmentation"}
                      if not_applicable([normalize(n, {}, "t")], WORKLOADS[w]) is None}
        assert ran == applicable, w
        assert len([t for t in gpu.trials if t.workload == w]) == 3 * (1 + len(applicable))
    resnet = [t for t in gpu.trials if t.workload == "resnet50"][0]
    assert resnet.model["image_size"] == 224 and resnet.model["classes"] == 1000
    assert {t.float32_matmul for t in gpu.trials} == {"tf32"}  # one policy, stated in the suite


def test_only_filters_by_glob_or_substring():
    quick = S.load("quick")
    assert {t.setting for t in S.filter_trials(quick.trials, "*-l2-float32-*")} == {"l2"}
    assert S.filter_trials(quick.trials, "batch_norm") and not S.filter_trials(quick.trials, "zzz")


def test_workload_model_options_are_validated_and_filled(tmp_path):
    s = parse(tmp_path, workloads=[{"name": "transformer_encoder", "model": {"layers": 2, "width": 64}}, "digits_mlp"])
    enc = [t for t in s.trials if t.workload == "transformer_encoder"][0]
    assert enc.model == {"layers": 2, "width": 64, "heads": 4, "seq_len": 128, "vocab": 1000, "classes": 4}
    assert [t for t in s.trials if t.workload == "digits_mlp"][0].model is None
    assert parse(tmp_path, workloads=["resnet50"]).trials[0].model["image_size"] == 224


@pytest.mark.parametrize("model,expected", [
    ({"layer": 2}, "workloads[0].model.layer: unknown option (allowed: layers, width, heads, seq_len, vocab, classes)"),
    ({"width": 0}, "workloads[0].model.width: 0 is out of range [8, 16384]"),
    ({"width": 64, "heads": 3}, "workloads[0].model.heads: width 64 is not divisible by heads 3"),
    ({"layers": 2.5}, "workloads[0].model.layers: 2.5 is not an integer"),
    ("big", "workloads[0].model: expected a mapping of options, got 'big'"),
])
def test_bad_model_options_are_one_line_naming_the_field(tmp_path, model, expected):
    assert expected in error(tmp_path, workloads=[{"name": "transformer_encoder", "model": model}])


def test_model_options_for_a_workload_without_them(tmp_path):
    assert "workloads[0].model: digits_mlp has no model options" in error(
        tmp_path, workloads=[{"name": "digits_mlp", "model": {"layers": 2}}])
    assert "workloads[0].model.depth: 18 is not one of [14, 26, 50]" in error(
        tmp_path, workloads=[{"name": "resnet50", "model": {"depth": 18}}])


def test_not_applicable_pairs_are_left_out_and_listed(tmp_path):
    s = parse(tmp_path, workloads=["digits_mlp", "synthetic_cnn", "transformer_encoder"],
              regularizers=["none", "cutmix", "stochastic_depth", ["l2", "spatial_dropout"]])
    cells = {(t.workload, t.setting) for t in s.trials}
    assert cells == {("digits_mlp", "none"), ("synthetic_cnn", "none"), ("transformer_encoder", "none"),
                     ("synthetic_cnn", "cutmix"), ("transformer_encoder", "stochastic_depth"),
                     ("synthetic_cnn", "l2+spatial_dropout")}
    na = {(n["workload"], n["setting"]): n["reason"] for n in s.not_applicable}
    assert len(na) == 6 and na == {(n["workload"], n["setting"]): n["reason"] for n in s.resolved["not_applicable"]}
    assert na[("digits_mlp", "cutmix")] == "mixes images; the inputs of digits_mlp are tabular"
    assert na[("synthetic_cnn", "stochastic_depth")] == "drops residual branches; synthetic_cnn (cnn) has none"
    assert na[("transformer_encoder", "l2+spatial_dropout")].startswith("spatial_dropout: drops conv feature maps")


def test_a_setting_that_applies_to_no_workload_is_an_error(tmp_path):
    msg = error(tmp_path, workloads=["digits_mlp"], regularizers=["none", "cutmix"])
    assert msg.endswith("regularizers[1].cutmix: cutmix applies to none of this suite's workloads "
                        "(mixes images; the inputs of digits_mlp are tabular)")
    assert "regularizers[2][1].mixup: mixup applies to none" in error(
        tmp_path, workloads=["transformer_encoder", "digits_mlp"], regularizers=["none", "l2", ["l2", {"mixup": {"alpha": 0.4}}]])
    msg = error(tmp_path, workloads=["synthetic_cnn", "transformer_encoder"], regularizers=[["mixup", "stochastic_depth"]])
    assert "regularizers[0]: mixup+stochastic_depth applies to none of this suite's workloads" in msg


def test_every_trial_carries_its_thread_cap_gpu_trials_too(tmp_path):
    """cpus_per_trial caps a trial's host threads whatever its device (a GPU trial's input pipeline
    and framework host work included), and it is part of the trial's identity, so runs made under
    different caps are never pooled (analysis pairs on cpu_threads too)."""
    from analysis.cells import CELL_KEYS

    for device in ("cpu", "gpu", "auto"):
        s = parse(tmp_path, device=device, cpus_per_trial=3)
        assert {t.cpu_threads for t in s.trials} == {3}
    a, b = parse(tmp_path, cpus_per_trial=1).trials[0], parse(tmp_path, cpus_per_trial=2).trials[0]
    assert a.cell_id != b.cell_id and "cpu_threads" in CELL_KEYS


def test_devices_run_each_trial_once_per_kind(tmp_path):
    s = parse(tmp_path, regularizers=["none", "l2"], devices=["gpu", "cpu"], cpus_per_trial=2, gpu_host_cpus=3,
              accelerator_types=["H100", "A100"], paired=False)
    assert s.device == "mixed" and s.devices == ("gpu", "cpu")
    copies = sorted((t.setting, t.device, t.accelerator_type, t.cpu_threads) for t in s.trials)
    # GPU copies once per accelerator type with the reserved host threads; CPU copies once, unpinned
    assert copies == sorted([(st, "gpu", a, 3) for st in ("none", "l2") for a in ("H100", "A100")]
                            + [(st, "cpu", None, 2) for st in ("none", "l2")])
    assert len({t.cell_id for t in s.trials}) == 6 and all(t.device in t.trial_id for t in s.trials)
    single = parse(tmp_path, devices=["cpu"])  # one kind: the same as device: cpu
    assert single.device == "cpu" and single.devices == () and single.trials[0].device is None
    assert single.trials[0].trial_id == parse(tmp_path, device="cpu").trials[0].trial_id


@pytest.mark.parametrize("fields,expected", [
    ({"devices": ["gpu", "tpu"]}, "devices[1]: unknown value 'tpu'"),
    ({"devices": ["gpu", "gpu"]}, "devices[1]: gpu is listed twice"),
    ({"devices": ["gpu", "cpu"], "device": "gpu"}, "devices: give either device (one kind) or devices"),
    ({"devices": ["gpu", "cpu"], "isolation": "node"}, "isolation: node (one trial per node) cannot run"),
    ({"devices": [], "isolation": "node"}, "devices: is empty"),
    ({"devices": ["gpu", "cpu"], "gpu_host_cpus": 0}, "gpu_host_cpus: 0 is out of range"),
])
def test_bad_devices_are_one_line(tmp_path, fields, expected):
    assert expected in error(tmp_path, **fields)


def test_gpu_check_subset_is_the_gpu_suite_at_its_sizes():
    """tests/benchmarks/gpu_check.yaml checks the gpu suite: same workloads at the same sizes, same policy."""
    gpu = S.load("gpu")
    check = S.load(str(S.SUITES_DIR.parents[1] / "tests" / "benchmarks" / "gpu_check.yaml"))
    sizes = {w["name"]: w for w in gpu.resolved["workloads"]}
    for w in check.resolved["workloads"]:
        assert w == sizes[w["name"]], w["name"]
    for key in ("float32_matmul", "epochs", "jit_compile", "device", "isolation", "paired"):
        assert check.resolved[key] == gpu.resolved[key], key
    assert {t.setting for t in check.trials} <= set(gpu.resolved["settings"])
    assert {t.precision for t in check.trials} <= set(gpu.resolved["precisions"])
    cpu = S.load(str(S.SUITES_DIR.parents[1] / "tests" / "benchmarks" / "gpu_check_cpu.yaml"))
    assert cpu.device != "gpu" and cpu.paired is None


def test_gpu_check_cells_pair_with_the_gpu_suite_and_pairs_run_first():
    """Defect caught: gpu_check.yaml lacked the gpu suite's cpus_per_trial, so no GPU-check trial
    could ever pair with a gpu-suite run; and its cells ran in a random order, so a short GPU hour
    could end with baselines and no regularized trial to divide them by."""
    gpu = S.load("gpu")
    check = S.load(str(S.SUITES_DIR.parents[1] / "tests" / "benchmarks" / "gpu_check.yaml"))
    assert {t.trial_id for t in check.trials} <= {t.trial_id for t in gpu.trials}
    # baseline and dropout of one workload and precision, then the next pair: every prefix of even
    # length is made of complete pairs
    trials = list(check.trials)
    for i in range(0, len(trials), 2):
        a, b = trials[i], trials[i + 1]
        assert a.cell_id != b.cell_id and (a.workload, a.precision) == (b.workload, b.precision)
        assert {a.setting, b.setting} == {"none", "dropout"}
    assert [t.precision for t in trials[:4]] == ["mixed_bfloat16"] * 4  # the suite's first precision first
    assert check.resolved["order"].startswith("pairs")


def test_order_must_be_known(tmp_path):
    assert "order: unknown value 'sideways'" in error(tmp_path, order="sideways")
