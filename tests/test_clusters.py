"""clusters/: every shipped file validates offline, validation errors are one line naming the
file and field, the shipped defaults are the safe ones, and the entry script builds the right
`regbench run` command. (The real `ray up`/`ray submit` run is tests/test_ray_submit_e2e.py.)"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import pathlib
import re
import socket
import subprocess
import sys

import pytest
import ray
import yaml

from bench.clusterfiles import is_cluster_file, kuberay, validate_cluster_file
from bench.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
LAUNCHER_FILES = ["onprem.yaml", "aws-gpu.yaml", "gcp-gpu.yaml"]
KUBERAY_FILES = ["kuberay-gpu.yaml"]
ALL_FILES = LAUNCHER_FILES + KUBERAY_FILES


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def write(tmp_path: pathlib.Path, data: dict, name: str = "cluster.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: validation must stay offline."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster validation tried to open a connection: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_clusters_dir_ships_what_the_issue_lists():
    assert sorted(p.name for p in CLUSTERS.glob("*.yaml")) == sorted(ALL_FILES)
    assert (CLUSTERS / "regbench_job.py").is_file()
    assert (CLUSTERS / "README.md").is_file()


@pytest.mark.parametrize("name", ALL_FILES)
def test_shipped_file_is_valid_offline(name, no_network):
    summary = validate_cluster_file(CLUSTERS / name)
    assert "\n" not in summary and summary.startswith(str(CLUSTERS / name) + ": valid")


def test_summaries_say_provider_and_node_types():
    assert validate_cluster_file(CLUSTERS / "aws-gpu.yaml").endswith(
        "valid Ray cluster config (provider aws, 3 node types)")
    assert "provider gcp, 3 node types" in validate_cluster_file(CLUSTERS / "gcp-gpu.yaml")
    assert "provider local" in validate_cluster_file(CLUSTERS / "onprem.yaml")
    assert "KubeRay RayCluster (head + 2 worker groups)" in validate_cluster_file(CLUSTERS / "kuberay-gpu.yaml")


def test_is_cluster_file_tells_cluster_files_from_suites():
    assert is_cluster_file(load("onprem.yaml"))
    assert is_cluster_file(load("kuberay-gpu.yaml"))
    assert is_cluster_file({"cluster_name": "x"})
    assert not is_cluster_file({"name": "smoke", "workloads": [], "regularizers": ["none"]})
    assert not is_cluster_file(["not", "a", "mapping"])
    assert not is_cluster_file(None)
    for suite in (REPO / "bench" / "suites").glob("*.yaml"):
        assert not is_cluster_file(yaml.safe_load(suite.read_text())), suite


# ----------------------------------------------------------------------------- errors: one line, file and field


def error_of(path: pathlib.Path) -> str:
    with pytest.raises(UserError) as info:
        validate_cluster_file(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(str(path) + ":"), message
    return message


def test_wrong_type_names_the_field(tmp_path):
    config = load("onprem.yaml")
    config["provider"]["head_ip"] = 5
    assert "invalid field provider.head_ip: 5 is not of type 'string'" in error_of(write(tmp_path, config))


def test_unknown_top_level_field_is_rejected(tmp_path):
    config = load("aws-gpu.yaml")
    config["setup_command"] = ["typo of setup_commands"]
    message = error_of(write(tmp_path, config))
    assert "setup_command" in message


def test_node_type_field_error_has_its_path(tmp_path):
    config = load("aws-gpu.yaml")
    config["available_node_types"]["gpu-1x"]["min_workers"] = "one"
    message = error_of(write(tmp_path, config))
    assert "available_node_types.gpu-1x.min_workers" in message, message


def test_ray_cross_field_rule_is_applied(tmp_path):
    config = load("aws-gpu.yaml")
    config["max_workers"] = 0  # less than the node types' min_workers: Ray's validate_config
    assert "invalid field max_workers" in error_of(write(tmp_path, config))


def test_local_provider_needs_worker_ips(tmp_path):
    config = load("onprem.yaml")
    del config["provider"]["worker_ips"]
    assert "invalid field provider.worker_ips" in error_of(write(tmp_path, config))


def test_local_provider_rejects_node_types(tmp_path):
    config = load("onprem.yaml")
    config["available_node_types"] = {"x": {"node_config": {}, "resources": {}}}
    config["head_node_type"] = "x"
    message = error_of(write(tmp_path, config))
    assert "available_node_types" in message and "on-premise" in message, message


def test_unknown_provider(tmp_path):
    config = load("gcp-gpu.yaml")
    config["provider"]["type"] = "gcpx"
    assert "invalid field provider.type" in error_of(write(tmp_path, config))


def test_not_yaml_and_missing_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("cluster_name: [\n")
    assert "not valid YAML at line" in error_of(broken)
    assert "absent.yaml: file not found" in error_of(tmp_path / "absent.yaml")


def test_kuberay_type_error_names_the_field(tmp_path):
    manifest = load("kuberay-gpu.yaml")
    manifest["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "4"
    message = error_of(write(tmp_path, manifest))
    assert "invalid field spec.workerGroupSpecs[0].maxReplicas: '4' is not of type 'integer'" in message


def test_kuberay_unknown_field_and_bad_quantity(tmp_path):
    manifest = load("kuberay-gpu.yaml")
    manifest["spec"]["workerGroupSpec"] = manifest["spec"].pop("workerGroupSpecs")
    assert "workerGroupSpec" in error_of(write(tmp_path, manifest, "a.yaml"))
    manifest = load("kuberay-gpu.yaml")
    manifest["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "8x"
    message = error_of(write(tmp_path, manifest, "b.yaml"))
    assert "spec.workerGroupSpecs[1].template.spec.containers[0].resources.limits.nvidia.com/gpu" in message


def test_kuberay_replicas_outside_bounds(tmp_path):
    manifest = load("kuberay-gpu.yaml")
    manifest["spec"]["workerGroupSpecs"][0]["replicas"] = 9
    assert "invalid field spec.workerGroupSpecs[0].replicas" in error_of(write(tmp_path, manifest))


def test_kuberay_needs_a_head(tmp_path):
    manifest = load("kuberay-gpu.yaml")
    del manifest["spec"]["headGroupSpec"]
    assert "headGroupSpec" in error_of(write(tmp_path, manifest))


def test_validation_does_not_change_the_callers_data(tmp_path):
    config = load("aws-gpu.yaml")
    before = copy.deepcopy(config)
    validate_cluster_file(write(tmp_path, config))
    assert yaml.safe_load((tmp_path / "cluster.yaml").read_text()) == before


# ----------------------------------------------------------------------------- the CLI hook


def regbench(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_regbench_validate_dispatches_cluster_files(tmp_path):
    ok = regbench("validate", "clusters/aws-gpu.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "valid Ray cluster config (provider aws, 3 node types)" in ok.stdout
    config = load("onprem.yaml")
    config["provider"]["head_ip"] = 5
    bad = regbench("validate", str(write(tmp_path, config)))
    assert bad.returncode != 0
    assert "provider.head_ip" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# ----------------------------------------------------------------------------- safe defaults


def ray_start_commands(config: dict) -> list[str]:
    return [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
            if "ray start" in c]


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_defaults_are_safe(name):
    config = load(name)
    starts = ray_start_commands(config)
    assert len(starts) == 2
    for command in starts:  # token auth on every node, set before `ray start`
        assert command.index("export RAY_AUTH_MODE=token") < command.index("ray start"), command
    head = [c for c in config["head_start_ray_commands"] if "ray start" in c][0]
    assert "--dashboard-host=127.0.0.1" in head
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "0.0.0.0" not in (CLUSTERS / name).read_text()
    # the project reaches the nodes by file_mounts + pip install, never the whole checkout
    assert "." not in config["file_mounts"].values()
    assert config["file_mounts"]["~/regbench/bench"] == "bench"
    assert any("pip install" in c and "~/regbench" in c.replace("$HOME", "~") for c in config["setup_commands"])


def test_nodes_offer_the_node_isolation_slot():
    onprem = load("onprem.yaml")
    assert all("--resources='{\"regbench_node_slot\": 1}'" in c for c in ray_start_commands(onprem))
    for name in ("aws-gpu.yaml", "gcp-gpu.yaml"):
        config = load(name)
        for node_type, spec in config["available_node_types"].items():
            expected = 0 if node_type == config["head_node_type"] else 1
            assert spec["resources"].get("regbench_node_slot", 0) == expected, (name, node_type)
    for group in load("kuberay-gpu.yaml")["spec"]["workerGroupSpecs"]:
        resources = group["rayStartParams"]["resources"]
        assert json.loads(json.loads(resources)) == {"regbench_node_slot": 1}


def test_kuberay_defaults_are_safe():
    manifest = load("kuberay-gpu.yaml")
    spec = manifest["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    assert [g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
            for g in groups] == [None, 1, 8]
    for group in groups:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "regbench-ray-auth", "key": "auth_token"}
        assert "$KUBERAY_GEN_RAY_START_CMD" in group["template"]["spec"]["containers"][0]["args"][0]
    assert manifest["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def test_no_real_addresses_or_credentials():
    documentation_ranges = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    for path in sorted(CLUSTERS.rglob("*")):
        if not path.is_file() or path.suffix not in {".yaml", ".py", ".md", ".sh"}:
            continue
        text = path.read_text()
        for found in re.findall(r"\b(\d{1,3}(?:\.\d{1,3}){3})\b", text):
            address = ipaddress.ip_address(found)
            assert address.is_loopback or any(address in n for n in documentation_ranges), (path, found)
        assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|aws_secret_access_key", text), path
        assert not re.search(r"auth_token:\s*\S{16,}", text), path


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"] + KUBERAY_FILES)
def test_images_match_the_installed_ray(name):
    text = (CLUSTERS / name).read_text()
    images = re.findall(r"image:\s*(\S+)", text)
    assert images and not [i for i in images if "ray-ml" in i], images
    for image in re.findall(r"rayproject/ray:(\S+)", text):
        if "<" in image:  # prose: rayproject/ray:<ray version>-py3XX-gpu
            continue
        assert re.fullmatch(rf"{re.escape(ray.__version__)}-py3\d+-gpu", image), image
    if name in KUBERAY_FILES:
        assert load(name)["spec"]["rayVersion"] == ray.__version__


def test_kuberay_pip_pins_match_pyproject():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"])
    tensorflow = [d for d in wanted if d.startswith("tensorflow==")]
    wanted -= set(tensorflow)
    wanted |= {d.replace("tensorflow", "tensorflow[and-cuda]") for d in tensorflow}
    assert set(project["optional-dependencies"]["gpu"]) <= wanted
    manifest = load("kuberay-gpu.yaml")
    spec = manifest["spec"]
    for group in [spec["headGroupSpec"]] + spec["workerGroupSpecs"]:
        args = group["template"]["spec"]["containers"][0]["args"][0]
        pins = set(re.findall(r'"([^"]+)"', args.split("&&")[0]))
        assert pins == wanted, (pins ^ wanted)


# ----------------------------------------------------------------------------- the entry script


@pytest.fixture
def job():
    spec = importlib.util.spec_from_file_location("regbench_job", CLUSTERS / "regbench_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_script_adds_defaults(job, tmp_path):
    command = job.build_command(["--suite", "smoke"], tmp_path)
    assert command[1:] == ["-m", "bench.cli", "run", "--suite", "smoke", "--executor", "ray", "--address", "auto",
                           "--out", str(tmp_path / "results")]
    # the cluster is joined because the script says so: `regbench run` alone starts a private instance
    assert job.build_command(["--executor", "ray"], tmp_path).count("--address") == 1


def test_entry_script_keeps_user_choices(job, tmp_path):
    command = job.build_command(["--executor=process", "--out", "/data/r"], tmp_path)
    assert command.count("--executor=process") == 1 and "ray" not in command
    assert command.count("--out") == 1 and "--address" not in command
    command = job.build_command(["--address", "10.0.0.5:6379"], tmp_path)
    assert command.count("--address") == 1 and "auto" not in command
    resume = job.build_command(["--resume", "/data/r/run1"], tmp_path)
    assert "--out" not in resume


def test_entry_script_finds_the_project_and_token(job, tmp_path, monkeypatch):
    monkeypatch.setenv("REGBENCH_HOME", str(tmp_path))
    assert job.project_dir() == tmp_path.resolve()
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert not job.token_available()
    (tmp_path / "token").write_text("x" * 32)
    assert job.token_available()


def test_entry_script_reports_failure_of_regbench_run(job, tmp_path, monkeypatch, capsys):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "cli.py").write_text("import sys\nprint('boom', file=sys.stderr)\nsys.exit(3)\n")
    monkeypatch.setenv("REGBENCH_HOME", str(tmp_path))
    assert job.main(["--suite", "smoke"]) == 3
    assert "exit status 3" in capsys.readouterr().err


def test_entry_script_prints_the_run_dir_last(job, tmp_path, monkeypatch, capsys):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "cli.py").write_text(
        "import os, sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
        "run = os.path.join(out, 'run1'); os.makedirs(run)\nprint('progress'); print(run)\n")
    monkeypatch.setenv("REGBENCH_HOME", str(tmp_path))
    assert job.main(["--", "--suite", "smoke"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(tmp_path / "results" / "run1")
    assert f"regbench-job: results in {tmp_path / 'results' / 'run1'}" in lines
    assert any(line.startswith("regbench-job: fetch them with: ray rsync-down") for line in lines)


def test_trimmed_crd_schema_is_itself_valid():
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(kuberay.schema())


# ----------------------------------------------------------------------------- KubeRay: strict where regbench relies


def test_kuberay_accepts_valid_fields_regbench_does_not_use(tmp_path):
    manifest = load("kuberay-gpu.yaml")
    spec = manifest["spec"]
    spec["enableInTreeAutoscaling"] = False
    spec["headServiceAnnotations"] = {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
    spec["authOptions"] = {"mode": "token"}  # KubeRay >= 1.5
    spec["gcsFaultToleranceOptions"] = {"redisAddress": "redis:6379"}
    head = spec["headGroupSpec"]
    head["template"]["spec"]["tolerations"] = [{"key": "dedicated", "operator": "Equal", "value": "ray",
                                                "effect": "NoSchedule"}]
    head["template"]["spec"]["containers"][0]["startupProbe"] = {"exec": {"command": ["true"]}}
    worker = spec["workerGroupSpecs"][0]
    worker["priority"] = 1
    worker["labels"] = {"tier": "gpu"}
    worker["template"]["spec"]["priorityClassName"] = "high"
    worker["template"]["spec"]["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "zone",
                                                                "whenUnsatisfiable": "ScheduleAnyway"}]
    spec["aFieldOfANewerKubeRay"] = {"x": 1}
    summary = validate_cluster_file(write(tmp_path, manifest))
    assert "valid KubeRay RayCluster (head + 2 worker groups)" in summary


@pytest.mark.parametrize("change, field, message", [
    (lambda s: s["headGroupSpec"]["rayStartParams"].update({"num-cpus": 2}),
     "spec.headGroupSpec.rayStartParams.num-cpus", "2 is not of type 'string'"),
    (lambda s: s["workerGroupSpecs"][1]["rayStartParams"].update(resources="regbench_node_slot=1"),
     "spec.workerGroupSpecs[1].rayStartParams.resources", "is not a JSON object of resource amounts"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"].update(
        {"nvidia.com/gpu": "0.5"}),
     "spec.workerGroupSpecs[0].template.spec.containers[0].resources.limits.nvidia.com/gpu", "whole number of GPUs"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["requests"].update(
        {"nvidia.com/gpu": 2}),
     "spec.workerGroupSpecs[0].template.spec.containers[0].resources.requests.nvidia.com/gpu",
     "2 differs from limits 1"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"][1]["valueFrom"][
        "secretKeyRef"].update(key=5),
     "spec.workerGroupSpecs[0].template.spec.containers[0].env[1].valueFrom.secretKeyRef.key",
     "5 is not of type 'string'"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"].update(tolerations={"key": "nvidia.com/gpu"}),
     "spec.workerGroupSpecs[0].template.spec.tolerations", "is not of type 'array'"),
    (lambda s: s["workerGroupSpecs"][0]["template"]["spec"].update(
        toleration=s["workerGroupSpecs"][0]["template"]["spec"].pop("tolerations")),
     "spec.workerGroupSpecs[0].template.spec.toleration", "unknown field; did you mean 'tolerations'?"),
    (lambda s: s.update(enableInTreeAutoscaling="yes"), "spec.enableInTreeAutoscaling", "is not of type 'boolean'"),
    (lambda s: s["workerGroupSpecs"][0].update(resources={"CPU": "8"}),
     "spec.workerGroupSpecs[0].resources", "set in both rayStartParams and resources"),
])
def test_kuberay_fields_regbench_relies_on_stay_strict(tmp_path, change, field, message):
    manifest = load("kuberay-gpu.yaml")
    change(manifest["spec"])
    line = error_of(write(tmp_path, manifest))
    assert f": invalid field {field}: " in line and message in line, line


def test_raycluster_schema_names_its_kuberay_source():
    doc = kuberay.schema()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", doc["x-kuberay-version"])
    assert re.fullmatch(r"[0-9a-f]{40}", doc["x-source-commit"])
    assert doc["x-source"] == ("https://github.com/ray-project/kuberay/blob/" + doc["x-source-commit"]
                               + "/ray-operator/config/crd/bases/ray.io_rayclusters.yaml")
    assert "additionalProperties\": false" not in json.dumps(doc)  # unknown KubeRay fields are never rejected


def test_schema_derivation_keeps_what_regbench_uses_and_types_the_rest():
    spec = importlib.util.spec_from_file_location("derive", REPO / "tests" / "tools" / "derive_raycluster_schema.py")
    derive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(derive)
    crd_v1 = {"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "required": ["groupName", "maxReplicas"],
            "properties": {"groupName": {"type": "string", "description": "d"},
                           "maxReplicas": {"type": "integer", "format": "int32", "default": 5},
                           "scaleStrategy": {"type": "object", "properties": {"x": {"type": "string"}}},
                           "rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        "status": {"type": "object"}}}}}
    out = derive.derive(crd_v1, "")
    group = out["properties"]["spec"]["properties"]["workerGroupSpecs"]["items"]
    assert group["required"] == ["groupName"]  # maxReplicas has a default: the API server fills it in
    assert group["properties"]["groupName"] == {"type": "string"}
    assert group["properties"]["maxReplicas"] == {"type": "integer"}
    assert group["properties"]["scaleStrategy"] == {"type": "object"}  # not used by regbench: its type only
    assert group["properties"]["rayStartParams"] == {"type": "object", "additionalProperties": {"type": "string"}}


def test_yaml_errors_read_the_same_for_suites_and_cluster_files(tmp_path):
    from bench import suite

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [x\n")
    with pytest.raises(UserError) as as_suite:
        suite.load(str(broken))
    assert str(as_suite.value) == error_of(broken)
    assert re.fullmatch(rf"{re.escape(str(broken))}: not valid YAML at line 2, column 1: .+", error_of(broken))
