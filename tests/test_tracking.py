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


def test_tensorboard_alone_opens_no_run_and_a_missing_mlflow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    assert tracking.start_run(load_config("tiny"), "pretrain", RunDir(str(tmp_path / "run"))) is None
    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
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
