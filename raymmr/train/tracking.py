"""Experiment tracking beside metrics.jsonl and TensorBoard (which every run writes): MLflow or
Weights & Biases.

``train.tracker: mlflow`` (``--tracker mlflow``): the driver opens one MLflow run per training
stage (the resolved config as params, tags naming the stage and run directory), rank 0 logs every
metric record to it by run id, and the driver logs the export as an artifact and closes the run.
The run id is kept in the run directory (``tracking.json``), so a ``--resume`` from any machine
continues the same MLflow run. Sweeps log one MLflow run per trial through Ray Tune's
``MLflowLoggerCallback`` (``tune.runner``).

Why not Ray's ``setup_mlflow`` in the workers: it starts a new MLflow run on every call, so a
worker group restarted after a failure would split one training into several runs; here the
driver owns the run and the workers only append to it.

``train.tracker: wandb`` (``--tracker wandb``): the driver picks the W&B run's id (kept in
``tracking.json`` like MLflow's, so a ``--resume`` continues it) and rank 0 opens that run
(``wandb.init(id=..., resume="allow")``) with the resolved config, logs every metric record at its
step and finishes it when training ends; its local files (``wandb/``: all of them in offline
mode, ``WANDB_MODE=offline``, for ``wandb sync``) are copied into the run directory. The project is
``train.experiment`` (default ``raymmr-<stage>``), the entity and server W&B's own variables
(``WANDB_ENTITY``, ``WANDB_API_KEY``, ``WANDB_BASE_URL``), which the workers receive from the
driver. Sweeps log one W&B run per trial through Ray Tune's ``WandbLoggerCallback``.

The MLflow tracking URI is resolved once, on the driver: ``train.tracking_uri``, else
``MLFLOW_TRACKING_URI``, else MLflow's own default (``sqlite:///mlflow.db``) made absolute in the
driver's working directory. A Ray worker runs in another directory and maybe on another node: on
a cluster give an MLflow server (``http://...``) that every node reaches.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from raymmr import storage
from raymmr.config import Config, flatten
from raymmr.rundir import RunDir

log = logging.getLogger(__name__)

STATE = "tracking.json"  # in the run directory: the MLflow or W&B run a --resume continues
WANDB_DIR = "wandb"  # in the run directory: the W&B run's local files
# W&B's own settings, handed from the driver to the workers (a cluster's workers do not share
# the driver's environment); the key is a secret: it travels in Ray's runtime environment.
WANDB_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_BASE_URL")


@dataclass(frozen=True)
class TrackerRun:
    """What a worker needs to append to the driver's tracker run (a field of ``TrainJob``):
    MLflow's store URI, or W&B's project."""

    uri: str
    run_id: str
    kind: str = "mlflow"
    project: str = ""

    def describe(self) -> str:
        if self.kind == "wandb":
            return f"W&B run {self.run_id} in project {self.project} ({os.environ.get('WANDB_MODE', 'online')})"
        return f"MLflow run {self.run_id} in {redact(self.uri)}"


class TrackingError(RuntimeError):
    """A tracker that cannot be used here; the message says what to install or set."""


def require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise TrackingError("train.tracker=mlflow needs MLflow: pip install 'raymmr[mlflow]' "
                            "(or mlflow / mlflow-skinny)") from None


def require_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise TrackingError("train.tracker=wandb needs Weights & Biases: pip install 'raymmr[wandb]' (or wandb)") from None


def worker_env(cfg: Config) -> dict[str, str]:
    """The tracker's environment variables the workers need from the driver."""
    if cfg.train.tracker != "wandb":
        return {}
    return {k: os.environ[k] for k in WANDB_ENV if k in os.environ}


def tracking_uri(cfg: Config) -> str:
    """The MLflow tracking URI every process of this job uses (see the module docstring)."""
    uri = cfg.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "") or "sqlite:///mlflow.db"
    for scheme in ("sqlite:///", "file://"):
        if uri.startswith(scheme) and not uri[len(scheme):].startswith("/"):
            return scheme + str(Path(uri[len(scheme):]).resolve())
    return uri if storage.is_remote(uri) or uri.startswith("databricks") else Path(uri).resolve().as_uri()


def redact(uri: str) -> str:
    """The URI as it may be printed or saved: a password in it replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_no_password(cfg: Config) -> None:
    """``train.tracking_uri`` is saved with the config (the run's config.yaml, MLflow's params): a
    password there would be too. Refused, naming where it can go instead."""
    if redact(cfg.train.tracking_uri) != cfg.train.tracking_uri:
        raise TrackingError(f"train.tracking_uri={redact(cfg.train.tracking_uri)} holds a password, which would be saved "
                            "with the run's config: give the URI with MLFLOW_TRACKING_URI, or the password with "
                            "MLFLOW_TRACKING_PASSWORD (MLflow reads both; neither is written anywhere)")


def is_local(uri: str) -> bool:
    """A store on the driver's disk: workers on other nodes cannot write to it."""
    return uri.startswith(("sqlite:", "file:"))


def flat_params(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, values as text (``loss.w_img`` -> "1.0")."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flatten(cfg.to_dict()).items()}


def start_run(cfg: Config, stage: str, run: RunDir) -> TrackerRun | None:
    """Open (or, for a run directory that has one, reopen) the stage's MLflow run; None when the
    tracker is TensorBoard alone. A store that cannot be reached stops the job here, before Ray
    starts, naming the store."""
    if cfg.train.tracker == "tensorboard":
        return None
    if cfg.train.tracker == "wandb":
        return _start_wandb_run(cfg, stage, run)
    require_mlflow()
    check_no_password(cfg)
    try:
        return _start_run(cfg, stage, run)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - MLflow raises its own and the HTTP client's errors
        uri = tracking_uri(cfg)
        raise TrackingError(f"MLflow store {redact(uri)}: {type(e).__name__}: {str(e).replace(uri, redact(uri))}; "
                            "check train.tracking_uri / MLFLOW_TRACKING_URI") from None


def _start_run(cfg: Config, stage: str, run: RunDir) -> TrackerRun:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    client = MlflowClient(uri)
    if run.exists(STATE):
        saved = json.loads(run.fetch(STATE).read_text())
        if saved.get("uri") == redact(uri):
            client.update_run(saved["run_id"], status="RUNNING")
            return TrackerRun(uri=uri, run_id=saved["run_id"])
    experiment = experiment_id(client, uri, cfg.train.experiment or f"raymmr-{stage}")
    created = client.create_run(experiment, run_name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}",
                                tags={"raymmr.stage": stage, "raymmr.run_dir": run.url, "mlflow.source.name": "raymmr"})
    run_id = created.info.run_id
    params = [mlflow.entities.Param(k, v[:6000]) for k, v in flat_params(cfg).items()]
    for i in range(0, len(params), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=params[i : i + 100])
    run.write_text(STATE, json.dumps({"tracker": "mlflow", "uri": redact(uri), "run_id": run_id}))
    return TrackerRun(uri=uri, run_id=run_id)


def _start_wandb_run(cfg: Config, stage: str, run: RunDir) -> TrackerRun:
    """The W&B run's id and project (the worker opens the run): the saved one of a continued run
    directory, else a new id."""
    import uuid

    require_wandb()
    project = cfg.train.experiment or f"raymmr-{stage}"
    if run.exists(STATE):
        saved = json.loads(run.fetch(STATE).read_text())
        if saved.get("tracker") == "wandb" and saved.get("project") == project:
            return TrackerRun(uri="", run_id=saved["run_id"], kind="wandb", project=project)
    run_id = uuid.uuid4().hex[:12]  # W&B's ids: letters and digits
    run.write_text(STATE, json.dumps({"tracker": "wandb", "project": project, "run_id": run_id}))
    return TrackerRun(uri="", run_id=run_id, kind="wandb", project=project)


def experiment_id(client, uri: str, name: str) -> str:
    """The MLflow experiment ``name``, created when new; a local store keeps its artifacts beside
    it (``mlartifacts/``), not in whatever directory a process happens to run in."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    where = Path(uri.split(":///", 1)[1]).parent / "mlartifacts" if is_local(uri) else None
    return client.create_experiment(name, artifact_location=where.as_uri() if where else None)


def sweep_callbacks(cfg: Config, out: str | None = None) -> list:
    """Tune callbacks for ``train.tracker``: with mlflow, Ray's ``MLflowLoggerCallback`` (one MLflow
    run per trial: its parameters, every reported result, its end status); with wandb, Ray's
    ``WandbLoggerCallback`` (the same, one W&B run per trial, in project ``train.experiment``,
    default raymmr-sweep; its local files under the sweep's ``wandb/`` when ``out`` is a local
    directory)."""
    if cfg.train.tracker == "wandb":
        require_wandb()
        from ray.air.integrations.wandb import WandbLoggerCallback

        project = cfg.train.experiment or "raymmr-sweep"
        print(f"[sweep] W&B project {project!r} ({os.environ.get('WANDB_MODE', 'online')})", flush=True)
        where = {"dir": str(Path(out))} if out and not storage.is_remote(out) else {}
        return [WandbLoggerCallback(project=project, log_config=True, upload_checkpoints=False, **where)]
    if cfg.train.tracker != "mlflow":
        return []
    require_mlflow()
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    check_no_password(cfg)
    uri, name = tracking_uri(cfg), cfg.train.experiment or "raymmr-sweep"
    experiment_id(MlflowClient(uri), uri, name)
    print(f"[sweep] MLflow experiment {name!r} in {uri}", flush=True)
    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=name, save_artifact=False)]


def finish_run(tracker: TrackerRun | None, *, export_dir: str | None, status: str = "FINISHED") -> None:
    """Log the export (a local folder) as the run's ``export`` artifact and close the run with
    ``status`` (FINISHED, FAILED or KILLED)."""
    if tracker is None or tracker.kind == "wandb":  # rank 0 finishes a W&B run when training ends
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.uri)
    if export_dir is not None:
        client.log_artifacts(tracker.run_id, export_dir, artifact_path=storage.EXPORT)
    client.set_terminated(tracker.run_id, status=status)


class _Appender:
    """Rank 0's appender to a tracker run: every numeric field of a metrics record at its step.
    Never ends the training: an unreachable tracker costs its copy of the metrics, which
    metrics.jsonl keeps; the first failure is reported, the rest counted."""

    name = ""  # the tracker, in the warning

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.failed = 0  # records the tracker did not take (metrics.jsonl and TensorBoard have them)

    def write(self, record: dict) -> None:
        metrics = {k: float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
        try:
            self.log(metrics, int(record["step"]))
        except Exception as e:  # noqa: BLE001 - any client or network error
            self.failed += 1
            if self.failed == 1:
                log.warning("%s run %s did not take the metrics of step %s (%s); training goes on, "
                            "metrics.jsonl has them", self.name, self.run_id, record["step"], e)

    def log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing to do by default: the driver closes an MLflow run (``finish_run``), with the export."""


class MetricsLog(_Appender):
    """Rank 0's appender to the driver's MLflow run."""

    name = "MLflow"

    def __init__(self, tracker: TrackerRun, stage: str):
        from mlflow.tracking import MlflowClient

        super().__init__(tracker.run_id)
        self.client, self.stage = MlflowClient(tracker.uri), stage

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])


class WandbLog(_Appender):
    """Rank 0's W&B run: opened with the resolved config, finished (and its local files copied into
    the run directory) by ``close``."""

    name = "W&B"

    def __init__(self, tracker: TrackerRun, stage: str, cfg: Config, run_dir: RunDir):
        import wandb

        super().__init__(tracker.run_id)
        self.run_dir = run_dir
        self.run = wandb.init(id=tracker.run_id, project=tracker.project, resume="allow", job_type=stage,
                              name=f"{stage}-{tracker.run_id}", config=flat_params(cfg),
                              dir=str(run_dir.local), settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() returns once the run's last records are handed to W&B's service, which writes them
        # to the offline transaction log (run-<id>.wandb) afterwards: an upload right away could copy a
        # log holding its header alone (9 of 80 runs here, wandb 0.31). teardown() returns when the service has
        # ended, its files closed.
        wandb.teardown()
        self.run_dir.upload(WANDB_DIR)


def metrics_log(tracker: TrackerRun, stage: str, cfg: Config, run_dir: RunDir):
    """Rank 0's appender to the driver's tracker run (``MetricsLog`` or ``WandbLog``)."""
    if tracker.kind == "wandb":
        return WandbLog(tracker, stage, cfg, run_dir)
    return MetricsLog(tracker, stage)
