"""cluster/: launcher configs against Ray's own schema, KubeRay manifests, doc commands, sizing script.

The launcher YAMLs go through the jsonschema Ray ships (`ray/autoscaler/ray-schema.json`) and Ray's own
`prepare_config`/`validate_config`; the RayJob's runtime_env goes through `ray.runtime_env.RuntimeEnv`.
Every `python jobs/...` command in docs/cluster.md, README.md and the RayJob entrypoint runs for real
up to the point where it would start Ray (its runner is swapped for one that stops with the built config),
so the flags, the `--set` keys and the config validation are the ones the jobs actually accept.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import torch
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv

import dukd_ray.train.cli
import dukd_ray.train.pipeline  # noqa: F401  (JOB_RUNNERS patches these through sys.modules)
import dukd_ray.tune.cli  # noqa: F401
from dukd_ray.data.shards import RecordInfo
from dukd_ray.distill import recipe
from dukd_ray.models import build_arch
from dukd_ray.tune.sweep import DRIVER_RESOURCE

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
RAYCLUSTER = ROOT / "cluster" / "kuberay" / "raycluster.yaml"
RAYJOB = ROOT / "cluster" / "kuberay" / "rayjob-edsr-x4.yaml"
DOCS = ROOT / "docs" / "cluster.md"
# Where a job built on the shared job CLI hands over to Ray: replaced by a stop, so a documented command
# is parsed and its config fully validated without starting Ray. Other jobs stop right after parsing.
JOB_RUNNERS = {
    "dukd_ray.train.cli": "run_training",
    "dukd_ray.tune.cli": "run_sweep",
    "dukd_ray.train.pipeline": "run_plan",
}


def pinned(package: str) -> str:
    """The version constraints.txt pins for `package` (the file every install uses)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and name.lower() == package:
            return version
    raise AssertionError(f"constraints.txt does not pin {package}")


def load_sizing() -> Any:
    spec = importlib.util.spec_from_file_location("estimate_sizing", ROOT / "cluster" / "estimate_sizing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def ray_image_version(image: str) -> str:
    """`rayproject/ray:2.60.0-py311-gpu` -> `2.60.0` (tag format {Ray version}[-{Python}][-{platform}])."""
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray", f"{image}: expected a rayproject/ray image"
    return tag.split("-")[0]


# ---------------------------------------------------------------- Ray cluster launcher


def test_there_is_an_aws_launcher_config() -> None:
    assert ROOT / "cluster" / "aws-gpu.yaml" in LAUNCHER_YAMLS


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_validates_against_rays_schema(path: Path) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)
    # What `ray up` does next: merge the provider defaults, then Ray's checks beyond the schema
    # (head type among the node types, min_workers within max_workers, ...).
    validate_config(prepare_config(copy.deepcopy(config)))

    # The schema is strict where our configs could go wrong: a misspelt node-type key is rejected.
    typo = copy.deepcopy(config)
    head = typo["available_node_types"][typo["head_node_type"]]
    head["node_confg"] = head.pop("node_config")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, schema)


@pytest.mark.parametrize("path", LAUNCHER_YAMLS, ids=lambda p: p.name)
def test_launcher_yaml_gpu_workers_pinned_ray_and_project_install(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = config["head_node_type"]
    workers = {name: t for name, t in types.items() if name != head}
    assert workers and all(t["resources"].get("GPU", 0) > 0 for t in workers.values()), workers
    assert all(t.get("min_workers", 0) == 0 for t in workers.values()), "GPU nodes must scale to zero"
    assert types[head]["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert config["idle_timeout_minutes"] > 0

    assert ray_image_version(config["docker"]["image"]) == pinned("ray")
    # The checkout is mounted and installed with the pinned dependencies on every node.
    (mount,) = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert any(
        f"-c {mount}/constraints.txt" in cmd and f'-e "{mount}[' in cmd for cmd in config["setup_commands"]
    ), config["setup_commands"]


def test_aws_nodes_get_s3_access_from_instance_profiles_not_keys() -> None:
    path = ROOT / "cluster" / "aws-gpu.yaml"
    config = yaml.safe_load(path.read_text())
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"]["IamInstanceProfile"]["Name"], name
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id", text, re.I)


# ---------------------------------------------------------------- KubeRay


def check_ray_cluster_spec(spec: dict, where: str) -> None:
    """The fields KubeRay needs for a RayCluster spec, a GPU worker group, and the pinned Ray image."""
    ray_version = pinned("ray")
    assert spec["rayVersion"] == ray_version, where
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict), where
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    pods = [head["template"]] + [g["template"] for g in groups]
    for group in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "template", "rayStartParams"):
            assert key in group, f"{where}: worker group lacks {key}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], where
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f"{where}: no GPU limit"
    for pod in pods:
        assert pod["spec"]["serviceAccountName"], f"{where}: S3 access is through the IRSA service account"
        for container in pod["spec"]["containers"]:
            assert ray_image_version(container["image"]) == ray_version, f"{where}: {container['image']}"


def test_raycluster_manifest() -> None:
    (doc,) = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    assert doc["metadata"]["name"]
    check_ray_cluster_spec(doc["spec"], RAYCLUSTER.name)


def test_rayjob_manifest() -> None:
    (doc,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    check_ray_cluster_spec(spec["rayClusterSpec"], RAYJOB.name)

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/edsr_x4.py"]
    assert (ROOT / argv[1]).is_file()
    for flag in ("--data", "--teacher", "--storage", "--val-data"):
        assert argv[argv.index(flag) + 1].startswith("s3://"), flag
    assert (
        int(argv[argv.index("--num-workers") + 1])
        == spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"]
    )

    # Ray's own validation of the runtime_env; it installs the project with the pinned versions.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    RuntimeEnv(**runtime_env)
    packages = runtime_env["pip"]["packages"]
    assert any(p.startswith("-c ") and p.endswith("/constraints.txt") for p in packages), packages
    assert any(p.startswith("dukd-ray") for p in packages), packages


def _kuberay_resources(group: dict) -> dict[str, float]:
    """A group's custom resources: KubeRay passes `rayStartParams.resources` (a JSON string, quoted) to
    `ray start --resources`."""
    text = group["rayStartParams"].get("resources")
    return json.loads(json.loads(text)) if text else {}


def test_sweep_drivers_have_slots_on_the_head_only_one_per_gpu() -> None:
    """Every cluster config gives the head (on demand; a KubeRay head pod selects on-demand nodes) the trial
    drivers' resource and no GPU node has it, so no driver is on a spot node; the head holds a driver for
    every GPU the cluster can grow to."""
    aws = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    types = aws["available_node_types"]
    head = types.pop(aws["head_node_type"])
    assert all(DRIVER_RESOURCE not in t["resources"] for t in types.values())
    assert head["resources"][DRIVER_RESOURCE] >= sum(
        t["max_workers"] * t["resources"]["GPU"] for t in types.values()
    )
    (cluster,) = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d]
    (job,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = spec["workerGroupSpecs"]
        assert all(DRIVER_RESOURCE not in _kuberay_resources(g) for g in groups)
        gpus = sum(
            g["maxReplicas"]
            * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
            for g in groups
        )
        assert _kuberay_resources(spec["headGroupSpec"])[DRIVER_RESOURCE] >= gpus
        on_demand = spec["headGroupSpec"]["template"]["spec"]["nodeSelector"]
        assert on_demand["eks.amazonaws.com/capacityType"] == "ON_DEMAND"


# ---------------------------------------------------------------- commands in the docs


def job_commands(text: str) -> list[list[str]]:
    """Every `python jobs/<x>.py ...` command in the fenced code blocks of a markdown text, as argv."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            start = line.find("python jobs/")
            if start >= 0:
                commands.append(shlex.split(line[start:]))
    return commands


def documented_commands() -> list[list[str]]:
    commands = job_commands(DOCS.read_text()) + job_commands((ROOT / "README.md").read_text())
    (rayjob,) = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    return commands + [shlex.split(rayjob["spec"]["entrypoint"])]


class _Stop(Exception):
    """Raised in place of starting Ray: carries what the job would have run."""


def test_docs_contain_job_commands() -> None:
    jobs = {argv[1] for argv in job_commands(DOCS.read_text())}
    assert {"jobs/edsr_x4.py", "jobs/tune_upcycling.py"} <= jobs, jobs


@pytest.mark.parametrize("job", sorted({argv[1] for argv in documented_commands()}))
def test_documented_job_help_runs(job: str) -> None:
    assert (ROOT / job).is_file(), f"{job} is in the docs but not in the repository"
    proc = subprocess.run(
        [sys.executable, job, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "--help" in proc.stdout


@pytest.mark.parametrize("argv", documented_commands(), ids=lambda a: " ".join(a[1:4]))
def test_documented_job_command_is_accepted(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The job's own parser and config validation accept the documented arguments."""
    assert argv[0] == "python" and (ROOT / argv[1]).is_file(), argv

    def stop(*args: Any, **kwargs: Any) -> None:
        raise _Stop(args, kwargs)

    source = (ROOT / argv[1]).read_text()
    runners = {module: runner for module, runner in JOB_RUNNERS.items() if f"from {module} import" in source}
    for module, runner in runners.items():
        monkeypatch.setattr(sys.modules[module], runner, stop)
    if not runners:
        parse_args = argparse.ArgumentParser.parse_args

        def parse_then_stop(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
            stop(parse_args(self, *args, **kwargs))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", argv[1:])
    monkeypatch.chdir(ROOT)
    try:
        runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        pytest.fail(f"{' '.join(argv)}\nexited with {e.code}: {capsys.readouterr().err}")
    except _Stop:
        return
    pytest.fail(f"{argv[1]} finished without parsing its arguments or reaching {runners}")


def test_command_check_rejects_a_bad_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: an unknown --set key stops the job before its runner."""
    monkeypatch.setattr(dukd_ray.train.cli, "run_training", lambda cfg: pytest.fail("reached the runner"))
    monkeypatch.setattr(sys, "argv", ["jobs/edsr_x4.py", "--set", "train.no_such_key=1"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "jobs" / "edsr_x4.py"), run_name="__main__")
    assert e.value.code == 2


# ---------------------------------------------------------------- sizing estimate


@pytest.fixture(scope="module")
def sizing() -> Any:
    return load_sizing()


def edsr_forward_flops(num_feat: int, num_block: int, side: int) -> int:
    """EDSR x4 forward FLOPs by hand: 2 * Cin * Cout * 9 per output pixel for each 3x3 conv."""
    hw = side * side

    def conv(cin: int, cout: int, pixels: int) -> int:
        return 2 * cin * cout * 9 * pixels

    return (
        conv(3, num_feat, hw)  # conv_first
        + 2 * num_block * conv(num_feat, num_feat, hw)  # body: two convs per residual block
        + conv(num_feat, num_feat, hw)  # conv_after_body
        + conv(num_feat, 4 * num_feat, hw)  # upsample.0, then pixel shuffle x2
        + conv(num_feat, 4 * num_feat, 4 * hw)  # upsample.2, then pixel shuffle x2
        + conv(num_feat, 3, 16 * hw)  # conv_last at HR
    )


def test_flop_count_matches_the_conv_formula(sizing: Any) -> None:
    with torch.device("meta"):
        teacher = build_arch("edsr", 4, "teacher")
        tiny = build_arch("edsr", 4, "tiny_student")
    assert sizing.count_flops(teacher, 48) == edsr_forward_flops(256, 32, 48)
    kw = tiny.arch_spec["kwargs"]
    assert sizing.count_flops(tiny, 12) == edsr_forward_flops(kw["num_feat"], kw["num_block"], 12)
    # FLOPs scale with the batch, which is why the script counts one sample and multiplies
    assert sizing.count_flops(tiny, 12, batch=3) == 3 * sizing.count_flops(tiny, 12)
    # backward: grads of weights and inputs, about twice the forward
    ratio = sizing.count_flops(tiny, 12, backward=True) / sizing.count_flops(tiny, 12)
    assert 2.8 < ratio <= 3.0


@pytest.mark.parametrize("arch", ["edsr", "rcan"])
def test_iteration_cost_follows_the_dukd_iteration(sizing: Any, arch: str) -> None:
    """Teacher forwards on x, on n_gt_sub*B zoom-in cells and (paper row permitting) on x_down."""
    batch, patch, scale = 2, 16, 4
    cost = sizing.iteration_cost(
        arch, scale, batch=batch, patch=patch, presets=("tiny_teacher", "tiny_student")
    )
    paper = recipe(arch, scale, "dukd").distill
    assert (cost.n_gt_sub, cost.zoom_out) == (paper.n_gt_sub, paper.zoom_out)
    with torch.device("meta"):
        teacher, student = build_arch(arch, scale, "tiny_teacher"), build_arch(arch, scale, "tiny_student")
    passes = [(patch, batch), (patch, paper.n_gt_sub * batch)]
    passes += [(patch // scale, batch)] if paper.zoom_out else []
    assert cost.teacher_fwd_flops == sum(n * sizing.count_flops(teacher, s) for s, n in passes)
    assert cost.student_fwd_bwd_flops == sum(
        n * sizing.count_flops(student, s, backward=True) for s, n in passes
    )
    assert cost.total_flops == cost.teacher_fwd_flops + cost.student_fwd_bwd_flops
    assert paper.zoom_out == (arch == "edsr")  # the paper: EDSR x4 zooms out, RCAN x4 does not


def test_estimate_arithmetic(sizing: Any) -> None:
    crop = sizing.crop_pair_bytes(4)
    assert crop == 3 * 480 * 480 + 3 * 120 * 120
    assert crop == RecordInfo("x", (480, 480), (120, 120), 0, 0).nbytes  # what the stream reads per sample
    cost = sizing.IterationCost(
        arch="edsr", scale=4, batch=16, patch=48, n_gt_sub=1, zoom_out=True,
        teacher_params=10**7, student_params=10**6, teacher_fwd_flops=6 * 10**11,
        student_fwd_bwd_flops=4 * 10**11, student_fwd_flops=10**11, activation_bytes=2**30,
    )  # fmt: skip
    gpu = sizing.Gpu("test", "test.8x", per_node=8, vcpus_per_node=96, memory_gib=40, peak_bf16_tflops=100.0)
    e = sizing.estimate(cost, gpu, mfu=0.5)  # 1e12 FLOPs at 50 TFLOP/s = 0.02 s per step
    assert e["step_s"] == pytest.approx(0.02)
    assert e["gpu_hours"] == pytest.approx(250_000 * 0.02 / 3600, abs=0.05)
    assert e["node_wall_hours"] == pytest.approx(250_000 * 0.02 / 3600 / 8, abs=0.005)
    assert e["read_mb_s_per_gpu"] == round(16 * crop / 0.02 / 1e6)
    assert e["read_mb_s_per_node"] == round(8 * 16 * crop / 0.02 / 1e6)
    # fp32 student + grads + Adam moments (16 B/param), fp32 teacher (4 B/param), activations
    memory_gib = (16 * 10**6 + 4 * 10**7 + 2**30) / 2**30
    assert e["trial_memory_gib"] == round(memory_gib, 2)
    assert e["trials_per_gpu_by_memory"] == int(0.9 * 40 // memory_gib) == 34


def test_docs_sizing_tables_are_the_scripts_output() -> None:
    """`python cluster/estimate_sizing.py` runs and prints exactly the tables docs/cluster.md shows."""
    match = re.search(r"<!-- sizing:begin[^\n]*-->\n(.*?)\n<!-- sizing:end -->", DOCS.read_text(), re.S)
    assert match, "docs/cluster.md lacks the sizing:begin/end block"
    proc = subprocess.run(
        [sys.executable, "cluster/estimate_sizing.py"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == match.group(1), (
        "docs/cluster.md is out of date: paste the output of `python cluster/estimate_sizing.py`"
    )
