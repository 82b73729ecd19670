"""Real Ray clusters started with `ray start` on localhost: a job submitted with
`ray job submit --working-dir .`, and a two-node cluster with one training worker per node."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    # `python` in a submitted job must be this environment's interpreter.
    # Token authentication is on by default (Ray 2.60): every client sends ~/.ray/auth_token.
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
    }


ADDRESS_FILE = Path("/tmp/ray/ray_current_cluster")  # where `ray start` records its address


@contextmanager
def ray_node(*args: str):
    """`ray start --block` in its own process group, killed (with its Ray processes) on exit.
    (`ray stop` would also stop every other Ray on the machine, e.g. the test session's.)
    The address file `ray start` leaves behind is put back as it was. Each node's dashboard agent
    gets a free port: the default (52365) is taken by any other Ray on the machine, such as the
    test session's embedded one, and a head without its agent refuses every job submission."""
    before = ADDRESS_FILE.read_text() if ADDRESS_FILE.exists() else None
    proc = subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}", *args],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if before is None:
            ADDRESS_FILE.unlink(missing_ok=True)
        else:
            ADDRESS_FILE.write_text(before)


def wait_for_nodes(address: str, n: int, timeout: float = 120) -> None:
    code = (
        f"import ray; ray.init(address='{address}', log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip().splitlines() and int(p.stdout.strip().splitlines()[-1]) >= n:
            return
        time.sleep(2)
    raise TimeoutError(f"{n} Ray nodes did not come up at {address}: {p.stdout}{p.stderr}")


# A six-step tiny pre-training with one checkpoint and no validation, as `jobs/pretrain.py` arguments.
SHORT_RUN = ["--config", "tiny", "--steps", "6", "--set", "train.checkpoint_every=6", "--set", "train.val_every=0",
             "--set", "data.loader_workers=0"]  # fmt: skip


def pretrain(*args: str, environ: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python jobs/pretrain.py ARGS` with this environment's interpreter."""
    cmd = [sys.executable, str(ROOT / "jobs" / "pretrain.py"), *args]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_pretrain(tiny_data, tmp_path):
    port, dash = free_port(), free_port()
    run = tmp_path / "submitted"
    head = ["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    with ray_node(*head, f"--dashboard-port={dash}"):
        wait_for_nodes(f"127.0.0.1:{port}", 1)
        # A client without RAY_AUTH_MODE=token is told how to authenticate, not left with Ray's trace.
        bare = {k: v for k, v in env().items() if k != "RAY_AUTH_MODE"}
        refused = pretrain("--config", "tiny", "--address", f"127.0.0.1:{port}", "--data", tiny_data,
                           "--out", str(tmp_path / "refused"), environ=bare, timeout=300)  # fmt: skip
        assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr, refused.stderr[-3000:]
        excludes = json.dumps({"excludes": [".venv", ".git", "runs", "*.tar"]})
        cmd = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
               "--runtime-env-json", excludes, "--", "python", "jobs/pretrain.py", *SHORT_RUN,
               "--data", tiny_data, "--out", str(run)]  # fmt: skip
        for _ in range(20):
            proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600)
            # Just after `ray start` the node's dashboard agent may not be up yet; Ray asks to retry
            # (no job was created, so submitting again is safe).
            if "No available agent to submit job" not in proc.stderr:
                break
            time.sleep(3)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert (run / "export" / "model.safetensors").exists()


def test_two_node_cluster_one_worker_per_node(tiny_data, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    shared = tmp_path / "shared"  # both "nodes" see it: the shared storage of a real cluster
    head = ["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    with ray_node(*head, f"--dashboard-port={free_port()}"):
        with ray_node(f"--address={address}", "--num-cpus=1"):
            wait_for_nodes(address, 2)
            proc = pretrain(*SHORT_RUN, "--address", address, "--num-workers", "2", "--cpus-per-worker", "1",
                            "--data", tiny_data, "--out", str(shared / "run"), environ=env())  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    events = [json.loads(x) for x in (shared / "run" / "events.jsonl").read_text().splitlines()]
    nodes = {e["node_id"] for e in events if e["event"] == "worker_started"}
    assert len(nodes) == 2, f"both workers ran on one node: {events}"
    assert (shared / "run" / "export" / "model.safetensors").exists()
