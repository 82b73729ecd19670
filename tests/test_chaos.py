"""A node lost in the middle of a sweep, for real: three Ray nodes on this machine, each in its own
mount and process namespaces (``raynodes.on_node``), sharing only a local S3 server. The node that
runs a trial's training worker is killed whole (SIGKILL of its namespace's first process: the
kernel kills its raylet and every worker with it), and the sweep is expected to finish anyway."""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raynodes import ROOT, free_port, namespace_pid, node_env, on_node, private_filesystems, ray_node, wait_for_nodes

from raymmr import storage

pytestmark = pytest.mark.slow


def outer_pid(inner: int, node: subprocess.Popen) -> int | None:
    """This machine's PID of the process that is ``inner`` inside ``node``'s process namespace."""
    namespace = os.readlink(f"/proc/{namespace_pid(node)}/ns/pid")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            ns_pids = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(ns_pids.split()[-1]) == inner:
            return int(entry.name)
    return None


def events(url: str) -> list[dict]:
    out = []
    for line in storage.read_text(url).splitlines() if storage.exists(url) else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@pytest.mark.skipif(not private_filesystems(), reason="needs private mount and process namespaces (unshare)")
def test_a_node_killed_during_a_sweep_its_trial_continues_on_another_node(s3_server, s3_tiny_data, tmp_path):
    """A 2-trial sweep over three nodes that share no disk. Once a trial has a checkpoint in the
    bucket, the node running its training worker is killed whole. The trial is retried on another
    node from that checkpoint (its run records the resume at that step, on another node), and the
    sweep exits 0 with both trials' results."""
    token = secrets.token_hex(32)
    port = free_port()
    address = f"127.0.0.1:{port}"
    envs = {name: node_env(tmp_path, name, RAY_AUTH_TOKEN=token, **s3_server.env) for name in ("head", "a", "b")}
    out = s3_server.url("sweeps", "chaos")
    settings = ["train.steps=12", "train.checkpoint_every=4", "train.batch_size=8", "train.val_batches=1",
                "train.log_every=4", "data.loader_workers=0", "train.cpus_per_worker=0.9", "tune.rungs=2",
                "tune.scheduler=fifo", "tune.max_concurrent=2", "tune.trial_cpus=0.01", "tune.max_failures=2"]
    cmd = [sys.executable, str(ROOT / "jobs" / "tune_loss_weights.py"), "--config", "tiny", "--space", "mask_ratios",
           "--num-samples", "2", "--data", s3_tiny_data, "--address", address, "--out", out]
    for s in settings:
        cmd += ["--set", s]
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--node-name=head"]
    workers = {n: [f"--address={address}", "--num-cpus=1", f"--temp-dir={envs[n]['TMPDIR']}/ray", f"--node-name={n}"]
               for n in ("a", "b")}
    log_path = tmp_path / "sweep.log"
    with ray_node(*head, environ=envs["head"]) as head_node, ray_node(*workers["a"], environ=envs["a"]) as node_a, \
            ray_node(*workers["b"], environ=envs["b"]) as node_b:
        nodes = {"head": head_node, "a": node_a, "b": node_b}
        wait_for_nodes(address, 3, environ=envs["head"])
        with log_path.open("w") as log:
            sweep = subprocess.Popen(on_node(cmd, envs["head"], head_node), env=envs["head"], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        killed = None  # (trial, node name, checkpoint step)
        deadline = time.time() + 600
        try:
            while killed is None:
                assert sweep.poll() is None, "the sweep ended before a node was killed:\n" + log_path.read_text()[-4000:]
                assert time.time() < deadline, "no trial reached a checkpoint:\n" + log_path.read_text()[-4000:]
                for trial in storage.names(f"{out}/trials") if storage.exists(f"{out}/trials") else []:
                    run = f"{out}/trials/{trial}/pretrain"
                    from raymmr.train import checkpoint as ckpt

                    latest = ckpt.latest_complete(run)
                    started = [e for e in events(f"{run}/events.jsonl") if e["event"] == "worker_started"]
                    if latest is None or not started:
                        continue
                    worker = started[-1]
                    name = next((n for n, node in nodes.items() if n != "head" and outer_pid(worker["pid"], node)), None)
                    if name is None:
                        continue  # its worker runs on the head, which holds the sweep's driver: another trial
                    os.kill(namespace_pid(nodes[name]), signal.SIGKILL)  # the whole node, at once
                    killed = (trial, name, ckpt.read_meta(latest).step, worker["node_id"])
                    break
                time.sleep(0.5)
            code = sweep.wait(timeout=900)
        finally:
            if sweep.poll() is None:
                os.killpg(sweep.pid, signal.SIGKILL)
        text = log_path.read_text()
        assert code == 0, text[-4000:]
    trial, name, step, lost_node = killed
    rows = storage.read_text(f"{out}/trials.csv").splitlines()
    assert len(rows) == 3 and all(",COMPLETED," in r for r in rows[1:]), (killed, rows)
    run_events = events(f"{out}/trials/{trial}/pretrain/events.jsonl")
    resumed = [e for e in run_events if e["event"] == "resumed"]
    assert resumed and resumed[-1]["step"] >= step, (killed, run_events)
    after = [e for e in run_events if e["event"] == "worker_started"][-1]
    assert after["node_id"] != lost_node, (killed, run_events)
    assert storage.exists(f"{out}/trials/{trial}/pretrain/export/model.safetensors")
