"""Sweeps for real on CPU: Ray Tune + Optuna + ASHA over Ray Train trials of the tiny preset."""

import csv
import io
import json
import os
import shlex
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


def test_sweep_in_a_bucket_killed_then_resumed_on_a_fresh_machine(s3_server, s3_tiny_data, tmp_path):
    """`--out s3://...`: the driver (and its embedded Ray) is SIGKILLed once a trial has exported;
    the same command on a machine with an empty cache finishes the sweep without training completed
    trials again, ASHA stops a weak trial, and the report, best_config.yaml (a valid config) and
    the Optuna study land in the bucket; best_config.yaml loads as a config with the best trial's values."""
    from raynodes import node_env

    from raymmr import storage

    out = s3_server.url("sweeps", "killed")
    log = (tmp_path / "interrupted.log").open("w")  # a file, not a pipe nobody reads (it would fill and block)
    proc = subprocess.Popen(sweep_cmd(tmp_path, s3_tiny_data, out), stdout=log, stderr=subprocess.STDOUT,
                            env=node_env(tmp_path, "first", **s3_server.env), start_new_session=True)
    deadline = time.time() + 600

    def exported() -> set[str]:
        return {k.split("/")[3] for k in s3_server.keys("sweeps/killed/trials/")
                if k.endswith("pretrain/export/model.safetensors")}

    try:
        while not exported():
            assert proc.poll() is None, "the sweep ended early: " + (tmp_path / "interrupted.log").read_text()[-3000:]
            assert time.time() < deadline, "no trial finished: " + (tmp_path / "interrupted.log").read_text()[-3000:]
            time.sleep(2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a lost driver machine: no chance to save anything
        proc.wait()
    done_before = exported()
    starts_before = {t: count_starts(out, t) for t in done_before}
    resumed = subprocess.run(sweep_cmd(tmp_path, s3_tiny_data, out), capture_output=True, text=True,
                             env=node_env(tmp_path, "second", **s3_server.env), timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "[tune] continuing the sweep" in resumed.stdout, resumed.stdout[-4000:]
    rows = list(csv.DictReader(io.StringIO(storage.read_text(f"{out}/trials.csv"))))
    assert len(rows) == 4 and all(r["status"] in ("COMPLETED", "STOPPED_EARLY") for r in rows), rows
    assert any(r["status"] == "STOPPED_EARLY" for r in rows), rows  # ASHA stopped a trial
    assert all(r["objective"] for r in rows), rows
    for r in rows:  # trials that ran to the end exported their weights (Tune did not cut them short)
        if r["status"] == "COMPLETED":
            assert storage.exists(f"{out}/trials/{r['trial_id']}/pretrain/export/model.safetensors"), r
    for t in done_before:  # completed trials were not trained again
        assert count_starts(out, t) == starts_before[t], t
    for name in ("trials.md", "best_config.yaml", "history.png", "importances.png", "parallel_coordinates.png",
                 "base_config.yaml"):
        assert storage.exists(f"{out}/{name}"), name
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(storage.read_bytes(f"{out}/optuna.journal"))
    study = optuna.load_study(study_name="raymmr", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    # A trial the killed driver had asked Optuna for but Tune had not yet recorded is closed as
    # FAIL on resume: every trial of the sweep is there, none is left RUNNING.
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4, states
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}, states
    assert not (ROOT / "s3:").exists()
    # A launch with another base config is refused before it writes anything: it would have loaded
    # this study and mixed its trials into another sweep's.
    base_before = storage.read_bytes(f"{out}/base_config.yaml")
    again = subprocess.run(sweep_cmd(tmp_path, s3_tiny_data, out, "--set", "loss.w_txt=0.5"), capture_output=True,
                           text=True, env=node_env(tmp_path, "third", **s3_server.env), timeout=300)
    assert again.returncode == 2 and "another base config (loss.w_txt: 1.0 -> 0.5)" in again.stderr, \
        again.stdout[-2000:] + again.stderr[-2000:]
    assert storage.read_bytes(f"{out}/base_config.yaml") == base_before
    # best_config.yaml is accepted as is by a training job's --config (what jobs/pretrain.py does with it).
    from raymmr.config import load_config

    best = tmp_path / "best_config.yaml"
    best.write_bytes(storage.read_bytes(f"{out}/best_config.yaml"))
    cfg = load_config(str(best))
    best_trial = json.loads(storage.read_text(f"{out}/best_trial.json"))
    assert best_trial["params"]
    for key, value in best_trial["params"].items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == pytest.approx(value), key


def count_starts(out: str, trial: str) -> int:
    from raymmr import storage

    events = storage.read_text(f"{out}/trials/{trial}/pretrain/events.jsonl")
    return sum(json.loads(x)["event"] == "worker_started" for x in events.splitlines())


def readme_sweep_command() -> list[str]:
    """The sweep command the README shows first (between its `sweep-command` markers)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- sweep-command -->")[1].split("```")[1]
    return shlex.split(block.removeprefix("bash\n").replace("\\\n", " "))


def test_readme_sweep_command_finishes_as_written(tiny_data, tmp_path):
    cmd = readme_sweep_command()
    assert cmd[:2] == ["python", "jobs/tune_loss_weights.py"], cmd
    out = tmp_path / "sweep"
    cmd = [sys.executable, *cmd[1:]]
    cmd[cmd.index("--out") + 1] = str(out)  # the only change: where it writes
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert rows and all(r["status"] in ("COMPLETED", "STOPPED_EARLY") for r in rows), rows
    # Two objectives: the front, exactly the non-dominated trials, a config per point, no single best.
    from raymmr.config import load_config
    from raymmr.tune.report import pareto_front

    metrics = ["val_vqa_accuracy", "val_vqa_accuracy_cross_domain"]
    records = [{"trial_id": r["trial_id"], "params": {}, "objective": float(r[metrics[0]]), "iterations": 0,
                "status": r["status"], "objectives": {m: float(r[m]) for m in metrics}} for r in rows]
    expected = [r["trial_id"] for r in pareto_front(records, [(m, "max") for m in metrics])]
    front = json.loads((out / "front.json").read_text())["front"]
    assert expected and [p["trial_id"] for p in front] == expected
    assert {r["trial_id"] for r in rows if r["front"] == "yes"} == set(expected)
    for point in front:
        assert load_config(str(out / point["config"])).masking.asymmetric is not None
    assert (out / "front.png").exists() and not (out / "best_config.yaml").exists()
    assert "every trial runs to its end" in proc.stdout + proc.stderr
