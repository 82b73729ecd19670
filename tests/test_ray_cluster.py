"""A real Ray cluster started with `ray start` on localhost: a job submitted with
`ray job submit --working-dir .` (the two-node cluster is in test_object_storage.py)."""

import json
import subprocess
import time

import pytest
from raynodes import RAY, ROOT, SHORT_RUN, env, free_port, pretrain, ray_node, wait_for_nodes

pytestmark = pytest.mark.slow


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
