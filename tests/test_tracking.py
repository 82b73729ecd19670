"""Experiment tracking with MLflow (``train.tracker=mlflow``), checked with MLflow's own client
against a real store (sqlite, MLflow's default backend). Real runs are checked where they run
anyway: 4 training steps with ``--tracker mlflow`` in tests/test_foreign_shards.py (the pre-training
on img2dataset shards), and a 2-trial sweep's MLflow runs (Ray Tune's MLflowLoggerCallback) in
tests/test_autoscaling.py."""

import pytest

from raymmr.config import load_config
from raymmr.rundir import RunDir
from raymmr.train import tracking


def store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def runs(uri: str, experiment: str) -> list:
    """The MLflow runs of ``experiment``, read with MLflow's own client."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_a_run_gets_params_metrics_the_export_and_a_resume_continues_it(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # a relative store resolves on the driver, once
    cfg = load_config("tiny", ["train.tracker=mlflow", "train.tracking_uri=sqlite:///mlflow.db", "loss.w_img=0.5"])
    assert tracking.tracking_uri(cfg) == store(tmp_path)
    run = RunDir(str(tmp_path / "run"))
    started = tracking.start_run(cfg, "pretrain", run)
    log = tracking.MetricsLog(started, "pretrain")
    log.write({"step": 10, "loss": 2.5, "lr": 1e-3, "note": "text is not a metric"})
    log.write({"step": 20, "loss": 2.0, "lr": 9e-4})
    tracking.finish_run(started, export_dir=None, status="KILLED")
    again = tracking.start_run(cfg, "pretrain", run)  # --resume: the same MLflow run, running again
    assert again == started
    log.write({"step": 30, "loss": 1.5})
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "model.safetensors").write_bytes(b"weights")
    tracking.finish_run(again, export_dir=str(tmp_path / "export"))

    client = mlflow.MlflowClient(store(tmp_path))
    found = runs(store(tmp_path), "raymmr-pretrain")
    assert [r.info.run_id for r in found] == [started.run_id]
    record = found[0]
    assert record.info.status == "FINISHED"
    assert record.data.params["loss.w_img"] == "0.5" and record.data.params["train.tracker"] == "mlflow"
    assert record.data.tags["raymmr.run_dir"] == run.url
    assert [(m.step, m.value) for m in client.get_metric_history(started.run_id, "loss")] == [
        (10, 2.5), (20, 2.0), (30, 1.5)]
    assert "note" not in record.data.metrics
    assert [f.path for f in client.list_artifacts(started.run_id, "export")] == ["export/model.safetensors"]
    # The artifacts sit beside the local store, not in whatever directory a process ran in.
    assert (tmp_path / "mlartifacts").is_dir()


def hide_package(monkeypatch, package: str) -> None:
    """Make ``import package`` fail as if it were not installed."""
    import builtins

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)


def test_tensorboard_alone_opens_no_run_and_a_missing_mlflow_is_a_clear_error(tmp_path, monkeypatch):
    assert tracking.start_run(load_config("tiny"), "pretrain", RunDir(str(tmp_path / "run"))) is None
    hide_package(monkeypatch, "mlflow")
    with pytest.raises(tracking.TrackingError, match=r"pip install 'raymmr\[mlflow\]'"):
        tracking.start_run(load_config("tiny", ["train.tracker=mlflow"]), "pretrain", RunDir(str(tmp_path / "r2")))


def test_an_unreachable_tracker_does_not_end_the_training(tmp_path, caplog):
    """The store goes away mid-run: the MLflow copy of the metrics is skipped with one warning
    (metrics.jsonl keeps them) instead of failing the training step."""
    cfg = load_config("tiny", ["train.tracker=mlflow", f"train.tracking_uri={store(tmp_path)}"])
    log = tracking.MetricsLog(tracking.start_run(cfg, "pretrain", RunDir(str(tmp_path / "run"))), "pretrain")

    class Gone:
        def log_batch(self, *args, **kwargs):
            raise ConnectionError("connection refused")

    log.client = Gone()
    log.write({"step": 1, "loss": 1.0})
    log.write({"step": 2, "loss": 0.5})
    assert log.failed == 2
    assert sum("did not take the metrics" in r.message for r in caplog.records) == 1


def test_an_unreachable_store_stops_the_job_before_training_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = load_config("tiny", ["train.tracker=mlflow", "train.tracking_uri=http://127.0.0.1:9"])
    with pytest.raises(tracking.TrackingError, match=r"MLflow store http://127.0.0.1:9: .*tracking_uri"):
        tracking.start_run(cfg, "pretrain", RunDir(str(tmp_path / "run")))


def test_a_password_in_the_tracking_uri_is_never_printed_or_saved():
    """A password in train.tracking_uri would be saved with the run's config: refused, naming
    MLFLOW_TRACKING_URI / MLFLOW_TRACKING_PASSWORD; printed or saved URIs are redacted."""
    from raymmr.train.tracking import TrackingError, check_no_password, redact, sweep_callbacks

    assert redact("https://alice:s3cret@mlflow.example.org:5000/path") == "https://alice:***@mlflow.example.org:5000/path"
    assert redact("https://mlflow.example.org") == "https://mlflow.example.org"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    cfg = load_config("tiny", ["train.tracker=mlflow", "train.tracking_uri=https://alice:s3cret@mlflow.example.org"])
    for call in (check_no_password, sweep_callbacks):
        with pytest.raises(TrackingError) as e:
            call(cfg)
        assert "s3cret" not in str(e.value) and "MLFLOW_TRACKING_PASSWORD" in str(e.value)


def test_tensorboard_shows_each_step_once_after_a_restart(tmp_path):
    """A restart from the checkpoint at step 5, after the lost attempt logged up to step 8: the
    steps 6-8 of the lost attempt are purged, TensorBoard reads 1..10 once each, the new values."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from raymmr.train.metrics import MetricsWriter

    run = RunDir(str(tmp_path / "run"))
    first = MetricsWriter(run, "pretrain", total_steps=10)
    for step in range(1, 9):
        first.write({"step": step, "loss": 100.0 + step})
    first.close()
    time.sleep(1.1)  # event files are named by the second they were opened in
    second = MetricsWriter(run, "pretrain", total_steps=10, resume_step=5)
    for step in range(6, 11):
        second.write({"step": step, "loss": float(step)})
    second.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("pretrain/loss")]
    assert got == [(s, 100.0 + s) for s in range(1, 6)] + [(s, float(s)) for s in range(6, 11)], got


# --- Weights & Biases -----------------------------------------------------------------------------


def wandb_records(run_dir) -> dict:
    """The one W&B offline run under ``run_dir/wandb`` (``wandb_runs``)."""
    (found,) = wandb_runs(run_dir)
    return found


def wandb_runs(folder) -> list[dict]:
    """Every W&B offline run under ``folder/wandb``, read back (``wandb_log``)."""
    from pathlib import Path

    return [wandb_log(log) for log in sorted(Path(folder, tracking.WANDB_DIR).glob("offline-run-*/run-*.wandb"))]


def wandb_log(log) -> dict:
    """What a W&B offline run holds, read back from its transaction log (``run-<id>.wandb``:
    LevelDB's log format of W&B protobuf records; offline, W&B keeps the config, history and summary
    only there): {"id", "project", "config": {key: value}, "history": [{key: value}], "summary":
    {key: value}}."""
    import json

    from wandb.proto import wandb_internal_pb2

    data, block = log.read_bytes(), 32768
    assert data[:4] == b":W&B", log
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of a record split across blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""

    def items(updates) -> dict:
        return {(u.key or ".".join(u.nested_key)): json.loads(u.value_json) for u in updates}

    out = {"history": [], "summary": {}}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(id=r.run.run_id, project=r.run.project, config=items(r.run.config.update))
        elif kind == "history":
            out["history"].append(items(r.history.item))
        elif kind == "summary":
            out["summary"].update(items(r.summary.update))
    return out


def test_a_wandb_run_gets_the_config_and_every_metric_at_its_step_and_a_resume_keeps_its_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config("tiny", ["train.tracker=wandb", "loss.w_img=0.5", "train.experiment=proj"])
    run = RunDir(str(tmp_path / "run"))
    started = tracking.start_run(cfg, "pretrain", run)
    assert started.kind == "wandb" and started.project == "proj"
    assert tracking.start_run(cfg, "pretrain", run) == started  # --resume: the same W&B run
    assert tracking.worker_env(cfg) == {"WANDB_MODE": "offline"}
    log = tracking.metrics_log(started, "pretrain", cfg, run)
    log.write({"step": 10, "loss": 2.5, "lr": 1e-3, "note": "text is not a metric", "finite": True})
    log.write({"step": 20, "loss": 2.0})
    log.close()
    found = wandb_records(run.local)
    assert found["id"] == started.run_id and found["project"] == "proj"
    assert found["config"]["loss.w_img"] == "0.5" and found["config"]["train.tracker"] == "wandb"
    assert [(h["_step"], h["loss"]) for h in found["history"]] == [(10, 2.5), (20, 2.0)]
    assert "note" not in found["history"][0] and "finite" not in found["history"][0]


def test_a_missing_wandb_is_a_clear_error(tmp_path, monkeypatch):
    hide_package(monkeypatch, "wandb")
    with pytest.raises(tracking.TrackingError, match=r"pip install 'raymmr\[wandb\]'"):
        tracking.start_run(load_config("tiny", ["train.tracker=wandb"]), "pretrain", RunDir(str(tmp_path / "r")))


@pytest.mark.slow
def test_a_tiny_pretraining_with_tracker_wandb_writes_an_offline_run_with_its_config_and_losses(
        ray_local, tiny_data, tmp_path, monkeypatch):
    """Two Ray Train workers pre-train 4 steps with W&B offline (no server here; WANDB_MODE reaches
    the workers from the driver): the run directory's wandb/ holds the run, whose config is the
    job's and whose history has the loss at every log step, as metrics.jsonl has it."""
    import json

    from raymmr.train.launch import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = load_config("tiny", ["train.tracker=wandb", "train.steps=4", "train.log_every=2", "train.val_every=0",
                               "train.checkpoint_every=4", "loss.w_img=0.75"])
    run = tmp_path / "run"
    run_training(cfg, stage="pretrain", out=str(run), data=tiny_data)
    found = wandb_records(run)
    saved = json.loads((run / tracking.STATE).read_text())
    assert found["id"] == saved["run_id"] and found["project"] == "raymmr-pretrain"
    assert found["config"]["loss.w_img"] == "0.75" and found["config"]["train.steps"] == "4"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    assert [(h["_step"], h["loss"]) for h in found["history"] if "loss" in h] == logged and len(logged) == 2


def test_a_sweep_with_tracker_wandb_logs_each_trial_through_rays_callback(tmp_path, monkeypatch):
    from ray.air.integrations.wandb import WandbLoggerCallback

    monkeypatch.setenv("WANDB_MODE", "offline")
    (callback,) = tracking.sweep_callbacks(load_config("tiny", ["train.tracker=wandb"]), str(tmp_path))
    assert isinstance(callback, WandbLoggerCallback) and callback.project == "raymmr-sweep" and callback.log_config
    assert callback.kwargs["dir"] == str(tmp_path)  # the trials' W&B files sit in the sweep directory
    (remote,) = tracking.sweep_callbacks(load_config("tiny", ["train.tracker=wandb", "train.experiment=s1"]), "s3://b/s")
    assert remote.project == "s1" and "dir" not in remote.kwargs
    assert tracking.sweep_callbacks(load_config("tiny"), str(tmp_path)) == []



@pytest.mark.slow
def test_a_sweep_with_tracker_wandb_writes_one_offline_run_per_trial(tmp_path):
    """A 2-trial tiny sweep with --tracker wandb, W&B offline: the sweep directory's wandb/ holds one
    run per trial, each with the trial's sampled parameters as config and its objective at every
    rung in the history."""
    import csv
    import os
    import subprocess
    import sys
    from pathlib import Path

    root, out = Path(__file__).resolve().parent.parent, tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "jobs/tune_loss_weights.py", "--space", "search_spaces/mask_ratios.yaml", "--num-samples", "2",
         "--set", "train.steps=12", "--set", "train.val_batches=2", "--confirm-top", "0", "--tracker", "wandb",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900, cwd=root, env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = wandb_runs(out)
    trials = list(csv.DictReader((out / "trials.csv").open()))
    assert len(runs) == len(trials) == 2, (runs, trials)
    assert {r["project"] for r in runs} == {"raymmr-sweep"}
    for found in runs:
        sampled = {k for k in found["config"] if k.startswith("masking.")}
        assert sampled, found["config"]  # the trial's parameters
        rungs = [h for h in found["history"] if "val_vqa_accuracy" in h]
        assert rungs and [h["rung"] for h in rungs] == list(range(1, len(rungs) + 1)), found["history"]
