"""What a platform team deploys: cluster.yaml, the worker image and the KubeRay manifests agree
with each other, with Ray's own schema and with the command line they run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from bluref_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
KUBERAY = ROOT / "deploy" / "kuberay"


def pins() -> dict[str, str]:
    lines = (ROOT / "deploy" / "constraints.txt").read_text().splitlines()
    out = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def manifests() -> list[tuple[str, dict]]:
    return [(f.name, doc) for f in sorted(KUBERAY.glob("*.yaml"))
            for doc in yaml.safe_load_all(f.read_text())]


def gpu_workers_asked() -> int:
    """The most GPU workers any example in the README, docs or jobs/ asks for."""
    most = 0
    for f in [ROOT / "README.md", ROOT / "docs" / "commands.md", *sorted(ROOT.glob("jobs/*.py")),
              *sorted(KUBERAY.glob("rayjob-*.yaml"))]:
        text = re.sub(r"\\\n\s*", " ", f.read_text())  # join continued shell lines
        for line in text.splitlines():
            if "--use-gpu" in line or "--train-use-gpu" in line:
                most = max([most, *map(int, re.findall(r"--(?:train-)?workers (\d+)", line))])
    return most


def test_cluster_yaml_is_valid_for_ray_and_safe():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(dict(raw)))  # Ray's own schema (ray-schema.json) and checks
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    head = " ".join(raw["head_start_ray_commands"])
    assert "--num-cpus=0" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()
    # One image everywhere, no installs at boot, the token on every node, no .venv copied.
    assert raw["docker"]["image"].endswith("-cpu") and not raw["setup_commands"]
    assert types["gpu_worker"]["docker"]["worker_image"].endswith("-gpu")
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert raw["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    assert ".venv" in raw["rsync_exclude"]
    assert types["gpu_worker"]["max_workers"] >= gpu_workers_asked() >= 8


def test_cluster_yaml_errors_are_caught():
    """The schema check above has teeth: a misspelt key fails it."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    raw["available_node_types"]["gpu_worker"]["max_worker"] = 8
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(raw))


def test_image_installs_the_locked_versions():
    locked = pins()
    docker = (ROOT / "Dockerfile").read_text()
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", docker).group(1)
    assert ray_version == locked["ray"]
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}" in docker
    assert "pip install --no-cache-dir -r deploy/constraints.txt" in docker
    assert "python deploy/lock.py --check" in docker  # the build fails on any other version
    # Every dependency of the project is pinned, and the pin satisfies pyproject's range.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not in deploy/constraints.txt"
        assert req.specifier.contains(locked[name]), f"{name}=={locked[name]} vs {spec}"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!.venv" not in ignored


# The parts of KubeRay's CRDs (ray.io/v1) that these manifests use. No installed package ships
# the CRDs, so the fields are listed here from KubeRay's reference; unknown keys are errors
# (Kubernetes would silently drop them).
_TEMPLATE = {"type": "object", "required": ["spec"]}
_GROUP = {"rayStartParams": {"type": "object", "additionalProperties": {"type": "string"}},
          "template": _TEMPLATE}
RAYCLUSTER = {
    "type": "object", "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {
            "type": "object", "additionalProperties": False,
            "properties": {"upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                           "idleTimeoutSeconds": {"type": "integer"}}},
        "authOptions": {"type": "object", "additionalProperties": False,
                        "properties": {"mode": {"enum": ["disabled", "token"]},
                                       "secretName": {"type": "string"}}},
        "headGroupSpec": {"type": "object", "additionalProperties": False,
                          "required": ["template"], "properties": _GROUP},
        "workerGroupSpecs": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["groupName", "minReplicas", "maxReplicas", "template"],
            "properties": {**_GROUP, "groupName": {"type": "string"},
                           **{k: {"type": "integer", "minimum": 0}
                              for k in ("replicas", "minReplicas", "maxReplicas")}}}},
    },
}
RAYJOB = {
    "type": "object", "additionalProperties": False, "required": ["entrypoint"],
    "properties": {
        "entrypoint": {"type": "string"},
        "clusterSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode",
                                    "SidecarMode"]},
        "backoffLimit": {"type": "integer", "minimum": 0},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "rayClusterSpec": RAYCLUSTER,
    },
}
CONTAINER = {"type": "object", "required": ["name", "image"],
             "properties": {"name": {"type": "string"}, "image": {"type": "string"},
                            "envFrom": {"type": "array"}, "ports": {"type": "array"},
                            "resources": {"type": "object"}}}


def test_kuberay_manifests_validate_and_agree():
    import jsonschema

    docs = manifests()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["RayCluster", "RayJob", "RayJob", "RayJob", "Secret", "Secret"]
    secrets = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Secret"}
    cluster = next(d for _, d in docs if d["kind"] == "RayCluster")
    for name, doc in docs:
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1", name
            jsonschema.validate(doc["spec"], RAYCLUSTER if doc["kind"] == "RayCluster" else RAYJOB)
    spec = cluster["spec"]
    assert spec["rayVersion"] == pins()["ray"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "bluref-ray-token"}
    assert "auth_token" in secrets["bluref-ray-token"]["stringData"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["image"].endswith("-gpu") and groups["gpu"]["maxReplicas"] >= gpu_workers_asked()
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            jsonschema.validate(c, CONTAINER)
            assert {"secretRef": {"name": "bluref-s3"}} in c["envFrom"]  # S3 credentials
            assert set(secrets["bluref-s3"]["stringData"]) >= {"AWS_ACCESS_KEY_ID",
                                                                "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize("name", sorted(f.name for f in KUBERAY.glob("rayjob-*.yaml")))
def test_rayjob_entrypoints_parse(name):
    """Each RayJob runs a `bluref` command that the command line accepts as written."""
    job = yaml.safe_load((KUBERAY / name).read_text())
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "bluref" and job["spec"]["clusterSelector"] == {"ray.io/cluster": "bluref"}
    args = build_parser().parse_args(argv[1:])
    assert args.out.startswith("s3://")
