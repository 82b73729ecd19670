"""Autoscaling exercised, not only schema-checked: Ray's fake multi-node provider (the one
`ray.cluster_utils.AutoscalingCluster` uses; nodes are processes on this machine) with the worker
pools of cluster/aws.yaml, scaled down to this machine. A sweep that needs more than the head has
(the head advertises CPU 0, as on AWS) makes the autoscaler add nodes; once the sweep is done the
idle nodes are removed after `idle_timeout_minutes`. The sweep runs with `--tracker mlflow`, so
the same test checks that Ray Tune's MLflowLoggerCallback logged each trial as an MLflow run.

`AutoscalingCluster` itself is not used: it runs `ray stop --force` (which would stop every Ray on
the machine, the test session's too) and reads a defaults file the Ray wheel does not ship. The
same provider is loaded as an "external" one instead."""

import csv
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from raynodes import RAY, ROOT, free_port, node_env, ray_node
from test_tracking import runs

pytestmark = pytest.mark.slow

FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
HEAD_TYPE = "ray.head.default"  # the fake provider tags its head with this type name
IDLE_TIMEOUT_MINUTES = 0.1


def fake_cluster_config(launcher: dict, gcs_address: str) -> dict:
    """cluster/aws.yaml's node pools on the fake provider: each worker node has 1 CPU (its GPUs
    and accelerator types stay declared resources, so the pools are still told apart), at most 2
    worker nodes in all."""
    head = launcher["available_node_types"][launcher["head_node_type"]]
    types = {HEAD_TYPE: {"resources": dict(head["resources"]), "node_config": {}, "max_workers": 0}}
    for name, t in launcher["available_node_types"].items():
        if name == launcher["head_node_type"]:
            continue
        resources = {**t["resources"], "CPU": 1, "object_store_memory": 200 * 2**20}
        types[name] = {"resources": resources, "labels": t.get("labels", {}), "node_config": {},
                       "min_workers": t.get("min_workers", 0), "max_workers": min(t["max_workers"], 2)}
    return {
        "cluster_name": "raymmr-fake", "max_workers": 2, "upscaling_speed": launcher["upscaling_speed"],
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {"type": "external", "module": FAKE_PROVIDER, "gcs_address": gcs_address,
                     # what Ray's own fake-cluster config sets: no SSH updaters, node ids stand in for IPs
                     "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {}, "available_node_types": types, "head_node_type": HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }  # fmt: skip


def ray_status(address: str, environ: dict, *flags: str) -> subprocess.CompletedProcess | None:
    """`ray status` against the head's GCS; None when it did not answer in time (on a 2-core machine
    busy starting trial workers one call has taken over a minute: that is a missed sample, not a
    failure of the autoscaler under test)."""
    try:
        return subprocess.run([RAY, "status", *flags, "--address", address], env=environ, capture_output=True,
                              text=True, timeout=45)
    except subprocess.TimeoutExpired:
        return None


def active_nodes(address: str, environ: dict) -> dict[str, int]:
    """The autoscaler's own view (`ray status`, "Active:"): node type -> count. Read from the GCS,
    not through a driver: a driver connecting every few seconds would itself keep nodes busy."""
    deadline = time.time() + 180
    while (p := ray_status(address, environ)) is None or "Active:" not in p.stdout:
        assert time.time() < deadline, "no autoscaler report: " + ("`ray status` kept timing out" if p is None
                                                                  else p.stdout[-2000:] + p.stderr[-2000:])
        time.sleep(1)
    block = p.stdout.split("Active:")[1].split("Pending:")[0]
    return {line.split()[1]: int(line.split()[0]) for line in block.splitlines() if line.strip()[:1].isdigit()}


def cluster_state(address: str, environ: dict) -> str:
    """`ray status -v`: what the autoscaler sees on each node."""
    p = ray_status(address, environ, "-v")
    return "(`ray status -v` timed out)" if p is None else p.stdout


def test_sweep_scales_the_cluster_up_then_idle_nodes_are_removed(tiny_data, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    config = tmp_path / "autoscaler.json"
    config.write_text(json.dumps(fake_cluster_config(launcher, address)))
    head_env = node_env(tmp_path, "head", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_FAKE_CLUSTER="1",
                        AUTOSCALER_UPDATE_INTERVAL_S="1")
    head = ["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0", "--include-dashboard=false",
            f"--autoscaling-config={config}"]  # fmt: skip
    out = tmp_path / "sweep"
    mlflow_store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the sweep's MLflow runs, one per trial (tracking)
    sweep = [sys.executable, str(ROOT / "jobs" / "tune_loss_weights.py"), "--config", "tiny", "--address", address,
             "--space", str(ROOT / "search_spaces" / "mask_ratios.yaml"), "--num-samples", "2", "--data", tiny_data,
             "--out", str(out), "--tracker", "mlflow", "--set", f"train.tracking_uri={mlflow_store}"]  # fmt: skip
    # Each trial: 0.01 CPU + one 0.9-CPU worker, two at once: more than any one 1-CPU node holds.
    for s in ("train.steps=4", "train.val_batches=1", "train.log_every=2", "tune.rungs=1",
              "tune.scheduler=fifo", "tune.max_concurrent=2", "train.num_workers=1", "train.cpus_per_worker=0.9",
              "data.loader_workers=0"):
        sweep += ["--set", s]
    seen = []  # the worker nodes by type, as `ray status` showed them over time
    with ray_node(*head, environ=head_env):
        assert active_nodes(address, head_env) == {HEAD_TYPE: 1}
        with (tmp_path / "sweep.log").open("w") as log:
            proc = subprocess.Popen(sweep, env=head_env, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                seen.append(workers(active_nodes(address, head_env)))
                time.sleep(3)
        assert proc.wait() == 0, (tmp_path / "sweep.log").read_text()[-4000:]
        deadline = time.time() + IDLE_TIMEOUT_MINUTES * 60 + 60
        while workers(active_nodes(address, head_env)):
            assert time.time() < deadline, "idle worker nodes were not removed: " + cluster_state(address, head_env)
            time.sleep(2)
        monitor = "\n".join(p.read_text(errors="replace")
                            for p in Path(head_env["TMPDIR"]).glob("ray/session_*/logs/monitor.log"))
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and all(r["status"] == "COMPLETED" for r in rows), rows
    # --tracker mlflow: Ray Tune's MLflowLoggerCallback logged each trial as an MLflow run.
    tracked = runs(mlflow_store, "raymmr-sweep")
    assert len(tracked) == 2 and all(r.info.status == "FINISHED" for r in tracked), tracked
    assert all("rung" in r.data.metrics and any(k.startswith("val_") for k in r.data.metrics) for r in tracked), \
        [r.data.metrics for r in tracked]
    launched = [(int(n), t) for n, t in re.findall(r"Adding (\d+) node\(s\) of type (\S+)\.", monitor)]
    removed = [(int(n), t) for n, t in re.findall(r"Removing (\d+) nodes of type (\S+) \(idle\)", monitor)]
    print(f"launched {launched}, removed when idle {removed}, largest cluster seen {max(seen, key=sum_nodes)}")
    assert max(sum_nodes(w) for w in seen) >= 2, seen  # two trials at once: two worker nodes
    assert sum(n for n, _ in launched) >= 2 and sum(n for n, _ in removed) == sum(n for n, _ in launched), monitor
    # CPU-only trials land on the CPU pool: the autoscaler keeps GPU nodes for GPU work.
    assert {t for _, t in launched} == {"cpu_ondemand"}, launched


def workers(active: dict[str, int]) -> dict[str, int]:
    return {t: n for t, n in active.items() if t != HEAD_TYPE}


def sum_nodes(w: dict[str, int]) -> int:
    return sum(w.values())
