"""Runs where users run them: data and run directories in object storage (an S3 API served by
moto on 127.0.0.1), nodes that share no disk, a driver killed mid-run.

The jobs run as subprocesses, exactly as a user types them; each "machine" (Ray node, driver)
has its own TMPDIR, RAYMMR_CACHE and HOME, so a file that one of them reads but only another
wrote fails the test."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raynodes import RAY, ROOT, free_port, job, node_env, on_node, private_filesystems, ray_node, wait_for_nodes

from raymmr import storage
from raymmr.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


def jsonl(url: str) -> list[dict]:
    return [json.loads(x) for x in storage.read_text(url).splitlines() if x.strip()]


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def start_job(name: str, *args: str, environ: dict, log, node=None) -> subprocess.Popen:
    """`python jobs/<name>.py ARGS` in the background, in its own process group, on ``node``."""
    return subprocess.Popen(on_node([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], environ, node),
                            env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_after_first_checkpoint(proc: subprocess.Popen, run: str, log_path) -> int:
    """SIGKILL the job's process group (a lost driver machine) once a complete checkpoint of
    ``run`` is in the bucket; returns its step."""
    from raymmr.train import checkpoint as ckpt

    deadline = time.time() + 400
    try:
        while ckpt.latest_complete(run) is None:
            assert proc.poll() is None, f"the run ended before it was killed: {log_path.read_text()[-3000:]}"
            assert time.time() < deadline, f"no checkpoint reached the bucket: {log_path.read_text()[-3000:]}"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return ckpt.read_meta(ckpt.latest_complete(run)).step


def submit(dashboard: str, *args: str, environ: dict) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir <repo> -- python jobs/...`, as README "On a cluster" shows it."""
    excludes = json.dumps({"excludes": [".venv", ".git", "runs", "*.tar"]})
    cmd = [RAY, "job", "submit", "--address", f"http://{dashboard}", "--working-dir", str(ROOT),
           "--runtime-env-json", excludes, "--", "python", *args]  # fmt: skip
    for _ in range(20):
        proc = subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=600)
        # Just after `ray start` the head's dashboard agent may not be up yet; Ray asks to retry
        # (no job was created, so submitting again is safe).
        if "No available agent to submit job" not in proc.stderr:
            return proc
        time.sleep(3)
    return proc


def test_two_nodes_without_shared_disk(s3_server, s3_tiny_data, tmp_path):
    """2 Ray nodes (one training worker each) sharing only the bucket: each node, and each driver,
    sees a filesystem of its own (a private mount namespace: a path one writes does not exist on
    the other; ``raynodes.on_node``). Pre-train into the bucket from a driver on the head, the
    driver killed after its first checkpoint and the run continued from the URL by the same
    command from the other node; fine-tune from the bucket's export as a job submitted with
    `ray job submit --working-dir`; evaluate the bucket's fine-tuned export on a third machine; a
    short pre-training without --data (SynthRad generated on the driver's node reaches the bucket).
    Export, metrics, events and TensorBoard files are in the bucket."""
    token = secrets.token_hex(32)
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_env, worker_env, evaluator_env = (
        node_env(tmp_path, name, RAY_AUTH_TOKEN=token, **s3_server.env) for name in ("head", "worker", "evaluator"))
    pt, ft, ev = (s3_server.url("runs", "two-node", x) for x in ("pretrain", "finetune", "eval"))
    cluster = ["--address", address, "--num-workers", "2", "--cpus-per-worker", "1", "--data", s3_tiny_data,
               "--set", "data.loader_workers=0", "--set", "train.val_every=0"]  # fmt: skip
    pretrain = ["--config", "tiny", "--steps", "12", "--set", "train.checkpoint_every=4", "--set", "train.log_every=2",
                *cluster, "--out", pt]  # fmt: skip
    dashboard = f"127.0.0.1:{free_port()}"
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard.split(':')[1]}"]
    # A worker node takes the head's Ray temp directory unless told otherwise: on one machine that
    # would be one shared directory (a job's working directory, deleted by one node under the other).
    worker = [f"--address={address}", "--num-cpus=1", f"--temp-dir={worker_env['TMPDIR']}/ray"]
    log_path = tmp_path / "killed-driver.log"
    with ray_node(*head, environ=head_env) as head_node, ray_node(*worker, environ=worker_env) as worker_node:
        wait_for_nodes(address, 2, environ=head_env)
        if private_filesystems():  # what one node writes, the other does not see
            Path(head_env["RAYMMR_CACHE"], "only-here").write_text("head")
            probe = subprocess.run(on_node(["test", "-e", f"{head_env['RAYMMR_CACHE']}/only-here"], worker_env,
                                           worker_node), env=worker_env)
            assert probe.returncode == 1, "the worker node sees the head's files: not private"
        driver_env, second_driver_env = head_env, worker_env  # drivers on the head, then on the other node
        # A client without RAY_AUTH_MODE=token is told how to authenticate, not left with Ray's trace.
        # (Ray retries a refused connection 20 times, a second apart, before it gives up; 2 show the same.)
        bare = {k: v for k, v in driver_env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
        bare["RAY_NUM_REDIS_GET_RETRIES"] = "2"
        refused = job("pretrain", *pretrain, environ=bare, timeout=300, node=head_node)
        assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-3000:]
        with log_path.open("w") as log:
            killed_at = kill_after_first_checkpoint(
                start_job("pretrain", *pretrain, environ=driver_env, log=log, node=head_node), pt, log_path)
        assert killed_at < 12
        # The same command continues the run (a RayJob relaunched after its driver was lost); one
        # that would change the run is refused before Ray, naming the key, and loses nothing.
        changed = job("pretrain", *pretrain, "--set", "train.batch_size=4", environ=second_driver_env,
                      node=worker_node)
        assert changed.returncode == 2 and "train.batch_size: 32 -> 4" in changed.stderr, changed.stderr[-2000:]
        again = job("pretrain", *pretrain, environ=second_driver_env, node=worker_node)
        check(again)
        assert "[pretrain] continuing" in again.stdout + again.stderr, again.stdout[-2000:]
        submitted = submit(dashboard, "jobs/finetune.py", "--config", "tiny", "--steps", "4", "--set",
                           "train.checkpoint_every=4", *cluster, "--init", pt, "--out", ft, environ=driver_env)
        check(submitted)
        assert "succeeded" in (submitted.stdout + submitted.stderr).lower(), submitted.stdout[-3000:]
        # No --data: SynthRad is generated in the driver's cache, on the head only; the worker on
        # the other node reads the copy the driver put in the bucket.
        generated = job("pretrain", "--config", "tiny", "--steps", "2", "--set", "train.checkpoint_every=2",
                        "--set", "train.batch_size=8", "--address", address, "--num-workers", "2",
                        "--cpus-per-worker", "1", "--set", "data.loader_workers=0",
                        "--set", "train.val_every=0", "--out", s3_server.url("runs", "two-node", "generated"),
                        environ=head_env, node=head_node)
        check(generated)
        assert "uploading the SynthRad shards generated here" in generated.stdout, generated.stdout[-3000:]
    evaluated = job("evaluate", "--config", "tiny", "--model", ft, "--data", s3_tiny_data, "--limit", "64",
                    "--severities", "strong", "--out", ev, environ=evaluator_env)  # fmt: skip
    check(evaluated)

    metrics = jsonl(f"{pt}/metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == list(range(2, 13, 2)), metrics  # one continuous log
    resumed = [e for e in jsonl(f"{pt}/events.jsonl") if e["event"] == "resumed"]
    assert resumed and resumed[-1]["step"] >= killed_at, resumed
    keys = s3_server.keys("runs/two-node/")
    for run in ("pretrain", "finetune"):
        prefix = f"runs/two-node/{run}/"
        for name in ("export/model.safetensors", "export/config.yaml", "metrics.jsonl", "events.jsonl",
                     "config.yaml"):
            assert prefix + name in keys, f"{prefix + name} is not in the bucket"
        assert any(k.startswith(prefix + "tensorboard/") for k in keys), f"no TensorBoard files under {prefix}"
        events = jsonl(s3_server.url(prefix + "events.jsonl"))
        nodes = {e["node_id"] for e in events if e["event"] == "worker_started"}
        assert len(nodes) == 2, f"{run}: the two workers did not run on two nodes: {events}"
    assert "runs/two-node/finetune/similar_index.safetensors" in keys
    assert "runs/two-node/eval/results.json" in keys
    assert json.loads(storage.read_text(s3_server.url("runs/two-node/eval/results.json")))["n_vqa"] > 0
    # Nothing was written to a local folder named after the URL.
    assert not (ROOT / "s3:").exists()
    # No node keeps a checkpoint part in its scratch once the part is in the bucket.
    for environ in (head_env, worker_env):
        left = list(Path(environ["TMPDIR"]).glob(f"{ckpt.PART_PREFIX}*"))
        assert not left, f"checkpoint parts left on a node: {left}"


def test_shards_generated_on_the_driver_go_to_storage_for_a_cluster_run(s3_server, tiny_data, monkeypatch):
    """No --data on a cluster: SynthRad is made on the driver's disk, which workers on other nodes
    cannot read; the run gets the shards from the bucket instead (uploaded once)."""
    from raymmr.train.launch import share_generated_data

    monkeypatch.delenv("RAYMMR_STORAGE", raising=False)
    run = s3_server.url("runs", "generated")
    shared = share_generated_data(tiny_data, run)
    assert shared == f"{run}/synthrad" and storage.exists(f"{shared}/manifest.json")
    assert share_generated_data(tiny_data, "/tmp/a-local-run") == tiny_data  # a local run: a shared filesystem
    monkeypatch.setenv("RAYMMR_STORAGE", s3_server.url("raymmr"))
    shared = share_generated_data(tiny_data, run)
    assert shared == s3_server.url("raymmr", "shards", "synthrad", os.path.basename(tiny_data))
    names = storage.names(shared)
    assert "manifest.json" in names and any(n.endswith(".tar") for n in names)


SMALL_SYNTHRAD = ["--set", "data.synthrad_train=160", "--set", "data.synthrad_pretrain=160", "--set",
                  "data.synthrad_val=48", "--set", "data.synthrad_test=48"]  # fmt: skip


def test_a_sweep_and_an_ablation_stage_without_data_on_nodes_that_share_no_disk(s3_server, tmp_path):
    """Without --data, on 2 Ray nodes that each see their own filesystem (``raynodes.on_node``),
    drivers on the head: a 2-trial sweep (its trials' drivers and workers on either node) and an
    ablation stage (pre-train, fine-tune, text-only fine-tune, evaluate) both finish, their
    SynthRad generated on the head's disk and read by every node from the bucket. On one shared
    disk this would pass whatever path was handed around; here a driver-local path fails."""
    token = secrets.token_hex(32)
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_env, worker_env = (node_env(tmp_path, name, RAY_AUTH_TOKEN=token, RAY_ADDRESS=address, **s3_server.env)
                            for name in ("head", "worker"))
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"]
    worker = [f"--address={address}", "--num-cpus=1", f"--temp-dir={worker_env['TMPDIR']}/ray"]
    sweep_out, ablation_out = s3_server.url("sweeps", "nodisk"), s3_server.url("ablations", "nodisk")
    small = [*SMALL_SYNTHRAD, "--set", "train.cpus_per_worker=0.9", "--set", "data.loader_workers=0",
             "--set", "train.batch_size=8", "--set", "train.val_batches=1"]
    with ray_node(*head, environ=head_env) as head_node, ray_node(*worker, environ=worker_env):
        wait_for_nodes(address, 2, environ=head_env)
        sweep = job("tune_loss_weights", "--config", "tiny", "--space", "mask_ratios", "--num-samples", "2",
                    "--max-concurrent", "2", "--trial-cpus", "0.01", "--address", address, *small,
                    "--set", "train.steps=4", "--set", "tune.rungs=1", "--set", "tune.scheduler=fifo",
                    "--out", sweep_out, environ=head_env, node=head_node, timeout=900)
        check(sweep)
        assert "uploading the SynthRad shards generated here" in sweep.stdout, sweep.stdout[-3000:]
        rows = storage.read_text(f"{sweep_out}/trials.csv").splitlines()
        assert len(rows) == 3 and all(",COMPLETED," in r for r in rows[1:]), rows
        ablation = job("ablate", "--config", "tiny", "--variants", "full", "--seeds", "0", *small,
                       "--set", "train.steps=2", "--set", "finetune.steps=2", "--set", "train.checkpoint_every=2",
                       "--set", "train.val_every=0", "--out", ablation_out, environ=head_env, node=head_node,
                       timeout=900)
        check(ablation)
        assert "uploading the SynthRad shards generated here" in ablation.stdout, ablation.stdout[-3000:]
    assert storage.exists(f"{ablation_out}/full/seed0/eval/val/results.json")
    assert storage.exists(f"{ablation_out}/synthrad/manifest.json") and storage.exists(f"{sweep_out}/synthrad/manifest.json")
