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

import pytest
from raynodes import ROOT, SHORT_RUN, free_port, job, node_env, ray_node, wait_for_nodes

from raymmr import storage

pytestmark = pytest.mark.slow


def jsonl(url: str) -> list[dict]:
    return [json.loads(x) for x in storage.read_text(url).splitlines() if x.strip()]


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_two_nodes_without_shared_disk_pretrain_finetune_evaluate(s3_server, s3_tiny_data, tmp_path):
    """2 Ray nodes (one training worker each) + a driver on a third "machine": pre-train into the
    bucket, fine-tune from the bucket's export, evaluate the bucket's fine-tuned export."""
    token = secrets.token_hex(32)
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_env, worker_env, driver_env = (node_env(tmp_path, name, RAY_AUTH_TOKEN=token, **s3_server.env)
                                        for name in ("head", "worker", "driver"))
    pt, ft, ev = (s3_server.url("runs", "two-node", x) for x in ("pretrain", "finetune", "eval"))
    cluster = ["--address", address, "--num-workers", "2", "--cpus-per-worker", "1", "--data", s3_tiny_data]
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={free_port()}"]
    with ray_node(*head, environ=head_env), ray_node(f"--address={address}", "--num-cpus=1", environ=worker_env):
        wait_for_nodes(address, 2, environ=driver_env)
        check(job("pretrain", *SHORT_RUN, *cluster, "--out", pt, environ=driver_env))
        check(job("finetune", "--config", "tiny", "--steps", "4", "--set", "train.checkpoint_every=4",
                  "--set", "train.val_every=0", "--set", "data.loader_workers=0", *cluster,
                  "--init", pt, "--out", ft, environ=driver_env))  # fmt: skip
    evaluated = job("evaluate", "--config", "tiny", "--model", ft, "--data", s3_tiny_data, "--limit", "64",
                    "--severities", "strong", "--out", ev, environ=driver_env)  # fmt: skip
    check(evaluated)

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


def test_driver_killed_then_resumed_from_the_url_on_a_fresh_machine(s3_server, s3_tiny_data, tmp_path):
    """`--out s3://...`: the driver (with its embedded Ray) is SIGKILLed after the first checkpoint
    reached the bucket; `--resume URL` from a machine with an empty cache finishes the run."""
    run = s3_server.url("runs", "killed")
    args = ["--config", "tiny", "--steps", "16", "--set", "train.checkpoint_every=4", "--set", "train.log_every=2",
            "--set", "train.val_every=0", "--set", "data.loader_workers=0", "--set", "train.cpus_per_worker=1",
            "--data", s3_tiny_data, "--out", run]  # fmt: skip
    first = node_env(tmp_path, "first", **s3_server.env)
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "pretrain.py"), *args], env=first,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    from raymmr.train import checkpoint as ckpt

    deadline = time.time() + 400
    try:
        while ckpt.latest_complete(run) is None:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint reached the bucket"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its embedded Ray, as a lost machine
        proc.wait()
    killed_at = ckpt.read_meta(ckpt.latest_complete(run)).step
    assert killed_at < 16

    again = job("pretrain", *args, environ=node_env(tmp_path, "second", **s3_server.env))
    assert again.returncode == 2 and "--resume" in again.stderr, again.stderr[-2000:]
    resumed = job("pretrain", *args, "--resume", environ=node_env(tmp_path, "third", **s3_server.env))
    check(resumed)
    metrics = jsonl(f"{run}/metrics.jsonl")
    assert [m["step"] for m in metrics if "loss" in m] == list(range(2, 17, 2))
    events = [e for e in jsonl(f"{run}/events.jsonl") if e["event"] == "resumed"]
    assert events and events[-1]["step"] >= killed_at
    assert storage.exists(f"{run}/export/model.safetensors")
