"""The cluster configs in cluster/, checked offline: no cloud credentials, no Kubernetes, no Ray.

- Ray cluster-launcher YAMLs (aws, gcp) go through Ray's own config path: JSON-schema validation
  against ray/autoscaler/ray-schema.json, ``prepare_config`` (provider defaults, setup-command
  merge, Docker checks) + ``validate_config``, and the autoscaler-v2 ``AutoscalingConfig`` that the
  head node actually runs. The provider bootstrap (IAM, subnets, AMI and quota look-ups) needs
  credentials and is not run.
- KubeRay manifests are validated against the v1 CRD schemas of KubeRay v1.7.0, vendored in
  tests/data/ and made strict (unknown fields rejected, as `kubectl apply` does by default), so a
  misspelt field fails here instead of being dropped silently by the API server.
- Both are checked for what raymmr relies on: GPU pools that scale from zero with a cap, a head
  that runs no work, token authentication, the dashboard kept private, Ray/torch/DeepSpeed
  versions equal to the tested environment, and entrypoints that name real jobs and flags.

Regenerate the vendored CRD schema (after a KubeRay upgrade):
    python tests/test_cluster_configs.py --regenerate-kuberay-schema RAYCLUSTERS_CRD.yaml RAYJOBS_CRD.yaml
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
LAUNCHER = {"aws": CLUSTER / "aws.yaml", "gcp": CLUSTER / "gcp.yaml"}
KUBERAY = {
    "raycluster.yaml": "RayCluster",
    "rayjob-pretrain.yaml": "RayJob",
    "rayjob-tune.yaml": "RayJob",
}
RAYJOB_SCRIPTS = {"rayjob-pretrain.yaml": "jobs/pretrain.py", "rayjob-tune.yaml": "jobs/tune_loss_weights.py"}
KUBERAY_SCHEMA = Path(__file__).parent / "data" / "kuberay-v1.7.0-crd-schema.json"
README = CLUSTER / "README.md"
STORAGE_SCHEME = {"aws": "s3://", "gcp": "gs://"}
GPU_LIMIT = "nvidia.com/gpu"


def ray_version() -> str:
    return importlib.metadata.version("ray")


def installed(dist: str) -> str:
    return importlib.metadata.version(dist).split("+")[0]


def load(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------- cluster launcher


@pytest.fixture(params=sorted(LAUNCHER), scope="module")
def launcher(request):
    return request.param, load(LAUNCHER[request.param])


def worker_types(cfg: dict) -> dict:
    return {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}


def gpus(node_type: dict) -> int:
    return node_type["resources"].get("GPU", 0)


def is_spot(provider: str, node_type: dict) -> bool:
    nc = node_type["node_config"]
    if provider == "aws":
        return nc.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = nc.get("scheduling", {})
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


def run_options(cfg: dict) -> list[str]:
    return cfg.get("docker", {}).get("run_options", [])


def env_option(cfg: dict, name: str) -> str | None:
    for opt in run_options(cfg):
        m = re.fullmatch(rf"(?:--env|-e)[= ]{name}=(\S+)", opt)
        if m:
            return m.group(1)
    return None


def test_launcher_config_passes_ray_validation(launcher):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    _, cfg = launcher
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # as written, before any defaults are merged in
    prepared = prepare_config(copy.deepcopy(cfg))  # what `ray up` does before contacting the cloud
    validate_config(prepared)


def test_launcher_config_loads_into_autoscaler_v2(launcher):
    """The head node's autoscaler (v2 is the default for `ray up` since Ray 2.50) parses it."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    _, cfg = launcher
    auto = AutoscalingConfig(copy.deepcopy(cfg), skip_content_hash=True)
    types = auto.get_node_type_configs()
    assert set(types) == set(cfg["available_node_types"])
    assert auto.get_idle_timeout_s() == cfg["idle_timeout_minutes"] * 60
    for name, t in worker_types(cfg).items():
        assert types[name].max_worker_nodes == t["max_workers"]


def test_head_node_runs_no_work(launcher):
    _, cfg = launcher
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "head must advertise CPU 0 so no task or actor lands there"
    assert gpus(head) == 0


def test_gpu_pools_autoscale_within_caps(launcher):
    provider, cfg = launcher
    pools = {n: t for n, t in worker_types(cfg).items() if gpus(t) > 0}
    assert pools, "no GPU worker type"
    for name, t in pools.items():
        assert isinstance(t.get("min_workers"), int) and isinstance(t.get("max_workers"), int), name
        assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"], name
    assert any(gpus(t) == 8 and not is_spot(provider, t) for t in pools.values()), "no 8-GPU on-demand type"
    assert any(gpus(t) == 1 and is_spot(provider, t) for t in pools.values()), "no 1-GPU spot type"


def test_every_gpu_pool_holds_the_memory_base_reserves_per_worker(launcher):
    """Ray reserves train.memory_per_worker_gb for each worker: a node type whose memory the
    autoscaler does not know could never take one (the sweep waits forever). AWS's node provider
    measures each instance type; GCP's does not, so its node types declare their memory, enough for
    a worker on each GPU."""
    from raymmr.config import load_config
    from raymmr.train.launch import GB

    provider, cfg = launcher
    need = load_config("base").train.memory_per_worker_gb * GB
    for name, t in worker_types(cfg).items():
        if provider == "aws":
            continue  # measured by Ray's AWS node provider from the instance type
        assert "memory" in t["resources"], f"{provider} node type {name} declares no memory"
        assert t["resources"]["memory"] >= max(1, gpus(t)) * need, name


def test_idle_timeout_and_global_cap(launcher):
    _, cfg = launcher
    assert cfg["idle_timeout_minutes"] > 0
    types = worker_types(cfg).values()
    assert sum(t.get("min_workers", 0) for t in types) <= cfg["max_workers"]
    # The global cap is a real cost cap only if it binds before the per-type caps add up.
    assert cfg["max_workers"] <= sum(t["max_workers"] for t in types)


def test_cpu_only_pool_for_data_conversion(launcher):
    _, cfg = launcher
    cpu_pools = [t for t in worker_types(cfg).values() if gpus(t) == 0 and t["resources"].get("CPU", 0) > 0]
    assert cpu_pools, "no CPU-only worker type for jobs/make_shards.py"
    assert all(t["max_workers"] > 0 for t in cpu_pools)


def test_docker_image_is_the_ray_gpu_image_of_the_tested_ray(launcher):
    _, cfg = launcher
    image = cfg["docker"]["image"]
    # rayproject/ray-ml stopped being published after 2.49: the plain Ray GPU image it is.
    m = re.fullmatch(r"rayproject/ray:(?P<ver>[\w.]+)-py(?P<py>\d+)-(?P<platform>gpu|cu\d+)", image)
    assert m, f"{image}: expected rayproject/ray:<ray version>-py3XX-gpu|cuXXX"
    assert m["ver"] == ray_version(), f"cluster Ray {m['ver']} != tested Ray {ray_version()} (.venv)"
    assert cfg["docker"].get("container_name")


def test_setup_installs_torch_then_deepspeed_then_raymmr(launcher):
    _, cfg = launcher
    cmds = cfg["setup_commands"]

    def index(pred, what):
        hits = [i for i, c in enumerate(cmds) if pred(c)]
        assert hits, f"no setup command {what}"
        return hits[0]

    i_torch = index(lambda c: re.search(r"pip install .*\btorch==", c), "installing torch")
    i_ds = index(lambda c: re.search(r"pip install .*deepspeed==", c), "installing deepspeed")
    assert "--no-build-isolation" in cmds[i_ds], "DeepSpeed ships as source and must build against torch"
    i_pkg = index(lambda c: re.search(r"pip install .*-e (\S+)", c), "installing raymmr (pip install -e)")
    m = re.search(r"pip install .*-e (\S+)", cmds[i_pkg])
    assert i_torch < i_ds < i_pkg
    repo_remote = m.group(1)
    assert cfg["file_mounts"].get(repo_remote) == ".", f"{repo_remote} must be the working copy synced by file_mounts"
    # Every node gets exactly the versions the test suite runs with.
    text = " ".join(cmds)
    for dist in ("torch", "torchvision", "deepspeed"):
        pin = re.search(rf"(?<![\w-]){dist}==([\w.]+)", text)
        assert pin, f"{dist} is not pinned in setup_commands"
        assert pin.group(1) == installed(dist), f"{dist}=={pin.group(1)} on the cluster, {installed(dist)} tested"
    ray_pin = re.search(r"ray\[[\w,]+\]==([\w.]+)", text)
    assert ray_pin and ray_pin.group(1) == ray_version()
    assert "-c /home/ray/raymmr/constraints.txt" in cmds[i_pkg], "raymmr must install within constraints.txt"


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not a name==version pin"
            pins[name] = version
    return pins


def test_constraints_pin_the_tested_stack_and_the_installed_environment_matches():
    """constraints.txt names the tested version of every heavy dependency; `make` installs within
    it, so the environment the tests run in has exactly those; the cluster configs and the image
    instructions pin the same."""
    pins = constraints()
    assert set(pins) >= {"torch", "torchvision", "deepspeed", "ray", "transformers", "timm", "webdataset", "optuna"}
    for dist, version in pins.items():
        assert installed(dist) == version, f"{dist} {installed(dist)} is installed, constraints.txt pins {version}"
    texts = {path.name: path.read_text() for path in [*LAUNCHER.values(), CLUSTER / "README.md"]}
    for name, text in texts.items():
        for dist in ("torch", "torchvision", "deepspeed"):
            for version in re.findall(rf"(?<![\w-]){dist}==([\w.]+)", text):
                assert version == pins[dist], f"{name}: {dist}=={version}, constraints.txt pins {pins[dist]}"
        for version in re.findall(r"ray\[[\w,]+\]==([\w.]+)", text):
            assert version == pins["ray"], f"{name}: ray=={version}, constraints.txt pins {pins['ray']}"
    assert "-c /home/ray/raymmr/constraints.txt" in texts["README.md"], "the image must install within constraints.txt"


def test_dashboard_and_job_server_stay_on_localhost(launcher):
    _, cfg = launcher
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_token_authentication_on_every_node(launcher):
    _, cfg = launcher
    assert env_option(cfg, "RAY_AUTH_MODE") == "token"
    token_path = env_option(cfg, "RAY_AUTH_TOKEN_PATH")
    assert token_path, "nodes need RAY_AUTH_TOKEN_PATH"
    assert str(Path(token_path).parent) in cfg["file_mounts"], "the token file must reach every node via file_mounts"
    assert "RAY_AUTH_MODE=disabled" not in LAUNCHER[launcher[0]].read_text()


def test_shared_storage_and_worker_identity(launcher):
    provider, cfg = launcher
    storage = env_option(cfg, "RAYMMR_STORAGE")
    assert storage and storage.startswith(STORAGE_SCHEME[provider])
    for name, t in worker_types(cfg).items():
        nc = t["node_config"]
        if provider == "aws":
            assert nc.get("IamInstanceProfile", {}).get("Arn"), f"{name}: no instance profile for S3"
        else:
            assert nc.get("serviceAccounts"), f"{name}: no service account for GCS"


def test_provider_specific_gpu_settings(launcher):
    provider, cfg = launcher
    for name, t in worker_types(cfg).items():
        nc = t["node_config"]
        arch = [o for o in t.get("docker", {}).get("worker_run_options", []) if "TORCH_CUDA_ARCH_LIST" in o]
        assert bool(arch) == (gpus(t) > 0), f"{name}: TORCH_CUDA_ARCH_LIST belongs on (every) GPU type"
        if provider == "gcp":
            if gpus(t):
                assert nc["scheduling"]["onHostMaintenance"] == "TERMINATE", f"{name}: GPU VMs cannot live-migrate"
                assert t.get("initialization_commands"), f"{name}: wait for the NVIDIA driver"
        else:
            assert nc["ImageId"].startswith("ami-"), name
    if provider == "gcp":  # the disk type must be looked up in the zone the nodes launch in
        zone = cfg["provider"]["availability_zone"]
        for name, t in cfg["available_node_types"].items():
            for disk in t["node_config"]["disks"]:
                assert disk["initializeParams"]["diskType"].startswith(f"zones/{zone}/"), name


def test_node_labels_are_valid_ray_labels(launcher):
    from ray._private.label_utils import validate_node_label_syntax

    _, cfg = launcher
    for t in cfg["available_node_types"].values():
        labels = t.get("labels", {})
        validate_node_label_syntax(labels)
        assert not any(k.startswith("ray.io/") for k in labels), "ray.io/ labels are Ray's own"


# --------------------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict]]:
    with_docs = {}
    for name in KUBERAY:
        with open(CLUSTER / "kuberay" / name) as f:
            with_docs[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return with_docs


def cluster_specs(manifests) -> list[tuple[str, dict]]:
    out = []
    for name, docs in manifests.items():
        for doc in docs:
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            out.append((name, spec))
    return out


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def strict(node):
    """Reject fields a schema does not name, like `kubectl apply`'s default strict validation."""
    if isinstance(node, dict):
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


def test_kuberay_manifests_parse_with_expected_kinds(manifests):
    for name, docs in manifests.items():
        assert [d["kind"] for d in docs] == [KUBERAY[name]], name
        assert all(d["apiVersion"] == "ray.io/v1" for d in docs)


def test_kuberay_manifests_match_the_crd_schema(manifests):
    import jsonschema

    defs = strict(json.loads(KUBERAY_SCHEMA.read_text()))["$defs"]
    for name, docs in manifests.items():
        for doc in docs:
            validator = jsonschema.Draft202012Validator({"$defs": defs, "$ref": f"#/$defs/{doc['kind']}"})
            errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
            assert not errors, f"{name}:\n" + "\n".join(errors[:10])


def test_clusters_autoscale_with_token_auth_and_tested_ray(manifests):
    for name, spec in cluster_specs(manifests):
        assert spec["enableInTreeAutoscaling"] is True, name
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0, name
        assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: token authentication is off"
        assert spec["rayVersion"] == ray_version(), f"{name}: rayVersion {spec['rayVersion']} != tested Ray"
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", f"{name}: head must run no work"
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", f"{name}: head exposed"
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        images = {ray_container(g)["image"] for g in groups}
        assert len(images) == 1, f"{name}: every Ray pod must run one image, got {images}"
        assert f"ray{ray_version()}" in images.pop(), f"{name}: image tag must name the Ray version"


def test_worker_groups_have_bounds_gpus_and_shm(manifests):
    for name, spec in cluster_specs(manifests):
        assert any(GPU_LIMIT in ray_container(g)["resources"]["limits"] for g in spec["workerGroupSpecs"]), name
        for g in spec["workerGroupSpecs"]:
            where = f"{name}/{g['groupName']}"
            assert 0 <= g["minReplicas"] <= g["maxReplicas"], where
            assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], where
            pod = g["template"]["spec"]
            shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
            mounted = {m["name"] for m in ray_container(g).get("volumeMounts", []) if m["mountPath"] == "/dev/shm"}
            assert any(v["name"] in mounted for v in shm), f"{where}: /dev/shm must be a Memory emptyDir"
            res = ray_container(g)["resources"]
            if GPU_LIMIT in res.get("limits", {}):
                n = res["limits"][GPU_LIMIT]
                assert isinstance(n, int) and n >= 1, where
                assert res.get("requests", {}).get(GPU_LIMIT, n) == n, where
                assert any(t.get("key") == GPU_LIMIT for t in pod.get("tolerations", [])), f"{where}: GPU taint"
                assert pod.get("nodeSelector"), f"{where}: no nodeSelector for GPU nodes"


def quantity_bytes(q: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(q[:-2]) * units[q[-2:]] if q[-2:] in units else float(q)


def test_every_pod_caches_on_a_bounded_scratch_volume_it_requests(manifests):
    """raymmr's cache (RAYMMR_CACHE: shards, checkpoints at each restart, exports) lives on an
    emptyDir with a size limit, the pod requests that much ephemeral storage (the scheduler places
    it on a node with the disk), and the cache is pruned (RAYMMR_CACHE_GB) well inside the limit."""
    for name, spec in cluster_specs(manifests):
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            container = ray_container(group)
            env = {e["name"]: e["value"] for e in container["env"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            where = f"{name} {group.get('groupName', 'head')}"
            mount = next((p for p in mounts if env["RAYMMR_CACHE"].startswith(p + "/")), None)
            assert mount is not None, f"{where}: RAYMMR_CACHE {env['RAYMMR_CACHE']} is on no volume"
            limit = quantity_bytes(volumes[mounts[mount]]["emptyDir"]["sizeLimit"])
            for kind in ("requests", "limits"):
                assert quantity_bytes(container["resources"][kind]["ephemeral-storage"]) >= limit, (where, kind)
            assert 0 < float(env["RAYMMR_CACHE_GB"]) * 1e9 < 0.9 * limit, where


def test_raycluster_has_h100_spot_and_cpu_pools(manifests):
    (doc,) = manifests["raycluster.yaml"]
    gpu_counts = sorted(
        ray_container(g)["resources"]["limits"].get(GPU_LIMIT, 0) for g in doc["spec"]["workerGroupSpecs"]
    )
    assert gpu_counts[0] == 0, "no CPU-only group for data conversion"
    assert 1 in gpu_counts and 8 in gpu_counts


def test_rayjobs_clean_up_and_carry_a_runtime_env(manifests):
    for name in RAYJOB_SCRIPTS:
        (doc,) = manifests[name]
        spec = doc["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0, name
        runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(runtime_env, dict), name
        assert runtime_env.get("working_dir"), f"{name}: the job's code comes from runtime_env.working_dir"
        assert isinstance(runtime_env.get("env_vars"), dict), name
        assert all(isinstance(v, str) for v in runtime_env["env_vars"].values()), f"{name}: env values are strings"
        # Relaunched by KubeRay after a lost head or driver, the same entrypoint continues the run.
        assert spec["backoffLimit"] >= 1 and "--resume" not in spec["entrypoint"], name


# --------------------------------------------------------------------------- entrypoints and README


def job_commands(text: str) -> list[tuple[str, list[str], list[str]]]:
    """(script, arguments, repo paths among them) for every `python jobs/<x>.py ...` in ``text``."""
    text = re.sub(r"\\\n\s*", " ", text)  # shell line continuations
    out = []
    for m in re.finditer(r"python (jobs/[\w-]+\.py)([^\n|&;`]*)", text):
        args = shlex.split(m.group(2))
        paths = [a for a in args if re.fullmatch(r"(search_spaces|jobs|raymmr)/[\w./-]+", a)]
        out.append((m.group(1), args, paths))
    return out


def entrypoint_commands(manifests):
    return {name: job_commands(manifests[name][0]["spec"]["entrypoint"]) for name in RAYJOB_SCRIPTS}


def run_job_cli(script: str, *args: str) -> subprocess.CompletedProcess:
    # Argument parsing happens before any heavy import in every job, so this takes ~0.1 s.
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def parser_flags(script: str) -> set[str]:
    """The options a job's argparse parser defines, read from its --help (not its description)."""
    proc = run_job_cli(script, "--help")
    assert proc.returncode == 0, proc.stderr
    return {m.group(1) for m in re.finditer(r"^ {2}(?:-\w, )?(--[\w-]+)", proc.stdout, re.MULTILINE)}


def test_rayjob_entrypoints_name_existing_jobs(manifests):
    for name, commands in entrypoint_commands(manifests).items():
        assert [c[0] for c in commands] == [RAYJOB_SCRIPTS[name]], f"{name}: entrypoint runs {commands}"
        for script, _, paths in commands:
            missing = [p for p in [script, *paths] if not (ROOT / p).exists()]
            assert not missing, f"{name}: entrypoint names {missing}, not in the repository"


def test_documented_commands_name_existing_jobs_and_files():
    commands = job_commands(README.read_text())
    assert {"jobs/make_shards.py", "jobs/pretrain.py", "jobs/tune_loss_weights.py"} <= {c[0] for c in commands}
    missing = sorted({p for script, _, paths in commands for p in [script, *paths] if not (ROOT / p).exists()})
    assert not missing, f"cluster/README.md runs {missing}, not in the repository"


def test_job_arguments_in_entrypoints_and_readme_parse(manifests):
    """Every flag exists in that job's parser, and its parser accepts the values (types, choices)."""
    commands = [c for cs in entrypoint_commands(manifests).values() for c in cs] + job_commands(README.read_text())
    commands = [c for c in commands if (ROOT / c[0]).exists()]  # missing scripts fail the tests above
    flags = {script: parser_flags(script) for script in {c[0] for c in commands}}
    for script, args, _ in commands:
        unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in flags[script]]
        assert not unknown, f"{script} has no option {unknown} (documented as: {' '.join(args)})"
        # argparse converts and checks each value as it reads it and stops at the trailing --help.
        proc = run_job_cli(script, *args, "--help")
        assert proc.returncode == 0, f"{script} {' '.join(args)}:\n{proc.stderr}"


def test_readme_explains_placeholders_auth_and_elastic_checkpoints():
    readme = README.read_text()
    configs = [*LAUNCHER.values(), *(CLUSTER / "kuberay" / n for n in KUBERAY)]
    placeholders = {m for p in configs for m in re.findall(r"CHANGE_ME\w*", p.read_text())}
    undocumented = sorted(p for p in placeholders if p not in readme)
    assert not undocumented, f"cluster/README.md does not explain {undocumented}"
    for needed in ("RAY_AUTH_MODE=token", "ds_to_universal", "load_universal", "max_workers", "train.max_failures",
                   "backoffLimit"):
        assert needed in readme, needed


# --------------------------------------------------------------------------- schema vendoring


def _canon(node) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _count_subtrees(node, counts: dict[str, int], min_chars: int) -> None:
    if isinstance(node, dict):
        if "$ref" not in node and len(c := _canon(node)) >= min_chars:
            counts[c] = counts.get(c, 0) + 1
        for v in node.values():
            _count_subtrees(v, counts, min_chars)
    elif isinstance(node, list):
        for v in node:
            _count_subtrees(v, counts, min_chars)


def _replace_subtree(node, target: str, ref: dict):
    """``node`` with every child subtree equal to ``target`` (canonical JSON) replaced by ``ref``."""
    if isinstance(node, dict):
        return {
            k: ref if isinstance(v, dict) and _canon(v) == target else _replace_subtree(v, target, ref)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [ref if isinstance(v, dict) and _canon(v) == target else _replace_subtree(v, target, ref) for v in node]
    return node


def _dedupe(defs: dict, min_chars: int = 400) -> dict:
    """Move every subtree that occurs more than once (and is not tiny) into $defs, largest first."""
    while True:
        counts: dict[str, int] = {}
        for d in defs.values():
            _count_subtrees(d, counts, min_chars)
        repeated = [c for c, n in counts.items() if n > 1]
        if not repeated:
            return defs
        target = max(repeated, key=len)
        name = "shared-" + hashlib.sha1(target.encode()).hexdigest()[:10]
        ref = {"$ref": f"#/$defs/{name}"}
        defs = {k: _replace_subtree(v, target, ref) for k, v in defs.items()}
        defs[name] = json.loads(target)


def regenerate_kuberay_schema(rayclusters_crd: str, rayjobs_crd: str) -> None:
    """Write KUBERAY_SCHEMA from KubeRay's CRD files (helm-chart/kuberay-operator/crds/)."""

    def v1(path):
        crd = load(Path(path))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        schema["properties"].pop("status", None)
        return crd["spec"]["names"]["kind"], schema

    (rc_kind, rc), (rj_kind, rj) = v1(rayclusters_crd), v1(rayjobs_crd)
    assert (rc_kind, rj_kind) == ("RayCluster", "RayJob")
    spec = rc["properties"]["spec"]
    assert _canon(rj["properties"]["spec"]["properties"]["rayClusterSpec"]) == _canon(spec)
    rc["properties"]["spec"] = rj["properties"]["spec"]["properties"]["rayClusterSpec"] = {
        "$ref": "#/$defs/RayClusterSpec"
    }
    defs = _dedupe({"RayClusterSpec": spec, "RayCluster": rc, "RayJob": rj})
    out = {
        "$comment": (
            "KubeRay v1 CRD schemas (openAPIV3Schema) of RayCluster and RayJob from ray-project/kuberay "
            "tag v1.7.0 (commit 59d663aeec13760646da3db9c1cf8cfe883e30b7), files "
            "helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml and ray.io_rayjobs.yaml; Apache-2.0. "
            "Changes: `status` dropped; RayJob.spec.rayClusterSpec (identical to RayCluster.spec) and every other "
            "repeated subtree of 400+ characters moved to $defs. Regenerate with "
            "`python tests/test_cluster_configs.py --regenerate-kuberay-schema RAYCLUSTERS_CRD RAYJOBS_CRD`."
        ),
        "$defs": dict(sorted(defs.items())),
    }
    KUBERAY_SCHEMA.parent.mkdir(parents=True, exist_ok=True)
    KUBERAY_SCHEMA.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {KUBERAY_SCHEMA} ({KUBERAY_SCHEMA.stat().st_size} bytes, {len(defs)} definitions)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--regenerate-kuberay-schema":
        regenerate_kuberay_schema(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
