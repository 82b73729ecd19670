"""Sweeps for real on CPU: Ray Tune + Optuna + ASHA over Ray Train trials of the tiny preset."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

# Pre-training-only trials, short, with a continuous validation metric so ASHA's comparisons
# at each rung are not decided by ties.
SWEEP_SETTINGS = [
    "train.steps=12", "train.batch_size=16", "train.val_batches=4", "train.log_every=4", "data.loader_workers=0",
    "tune.metric=val_rec_txt_global", "tune.mode=min", "tune.rungs=3", "tune.grace_period=1",
    "tune.reduction_factor=2", "tune.max_concurrent=2", "tune.trial_cpus=0.01", "train.cpus_per_worker=0.99",
]


def space_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({
        "objective": "pretrain",
        "params": {"loss.w_img": {"uniform": [0.25, 2.0]}, "train.lr": {"loguniform": [1e-5, 3e-3]},
                   "loss.w_con_inter": {"uniform": [0.1, 1.0]}},
    }))
    return path


def sweep_cmd(tmp_path, data, out, *extra):
    cmd = [sys.executable, str(ROOT / "jobs" / "tune_loss_weights.py"), "--config", "tiny",
           "--space", str(space_file(tmp_path)), "--num-samples", "4", "--data", data, "--out", str(out)]
    for s in SWEEP_SETTINGS:
        cmd += ["--set", s]
    return [*cmd, *extra]


def test_sweep_asha_report_and_best_config(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    proc = subprocess.run(sweep_cmd(tmp_path, tiny_data, out), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = list(__import__("csv").DictReader((out / "trials.csv").open()))
    assert len(rows) == 4
    assert any(r["status"] == "STOPPED_EARLY" for r in rows), rows  # ASHA stopped a trial
    assert all(r["objective"] for r in rows)
    for r in rows:  # trials that ran to the end exported their weights (Tune did not cut them short)
        if r["status"] == "COMPLETED":
            assert (out / "trials" / r["trial_id"] / "pretrain" / "export" / "model.safetensors").exists(), r
    for name in ("trials.md", "best_config.yaml", "history.png", "importances.png", "parallel_coordinates.png"):
        assert (out / name).stat().st_size > 0, name
    study = optuna.load_study(study_name="raymmr", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    assert len(study.trials) == 4
    run = subprocess.run([sys.executable, str(ROOT / "jobs" / "pretrain.py"), "--config", str(out / "best_config.yaml"),
                          "--steps", "3", "--set", "train.checkpoint_every=3", "--set", "train.val_every=0",
                          "--data", tiny_data, "--out", str(tmp_path / "best-run")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_interrupted_sweep_resumes_without_rerunning(tiny_data, tmp_path):
    out = tmp_path / "sweep"
    log = (tmp_path / "interrupted.log").open("w")  # a file, not a pipe nobody reads (it would fill and block)
    proc = subprocess.Popen(sweep_cmd(tmp_path, tiny_data, out), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 600
    finished = []
    while time.time() < deadline and not finished:
        finished = [p for p in (out / "trials").glob("*/pretrain/export/model.safetensors")]
        time.sleep(2)
    assert finished, "no trial finished before the interruption: " + (tmp_path / "interrupted.log").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)  # Tune saves the experiment state and stops
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    done_before = {p.parts[-4] for p in (out / "trials").glob("*/pretrain/export/model.safetensors")}
    starts_before = {t: count_starts(out, t) for t in done_before}
    resumed = subprocess.run(sweep_cmd(tmp_path, tiny_data, out, "--resume"), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    rows = list(__import__("csv").DictReader((out / "trials.csv").open()))
    assert len(rows) == 4 and all(r["status"] in ("COMPLETED", "STOPPED_EARLY") for r in rows), rows
    for t in done_before:  # completed trials were not trained again
        assert count_starts(out, t) == starts_before[t], t


def count_starts(out: Path, trial: str) -> int:
    events = out / "trials" / trial / "pretrain" / "events.jsonl"
    return sum(json.loads(x)["event"] == "worker_started" for x in events.read_text().splitlines())
