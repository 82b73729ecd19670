"""One training stage as the driver resolved it: built once by ``launch.run_training`` and handed
to every Ray Train worker (``train_loop_config={"job": TrainJob}``), which reads it as is."""

from __future__ import annotations

from dataclasses import dataclass

from raymmr.config import Config
from raymmr.train.tracking import TrackerRun


@dataclass(frozen=True)
class TrainJob:
    cfg: Config
    stage: str  # "pretrain" or "finetune"
    run_dir: str  # the run: a path or URL (Ray Train's storage_path)
    launch: str  # this launch's Ray Train run name under run_dir (fresh per launch)
    data: str  # the shard set: a directory or URL
    vocab_size: int  # the tokenizer's size (the export probe's token range)
    init_from: str | None = None  # an export to start from (fine-tuning, --init)
    resume_from: str | None = None  # --resume: the checkpoint the workers load when Ray has none newer
    rung_offset: float | None = None  # a Tune trial: ASHA's clock offset (launch.run_training)
    key_log: str | None = None  # a test's record of consumed sample keys (RAYMMR_KEY_LOG)
    tracker: TrackerRun | None = None  # the MLflow run rank 0 appends metrics to (train.tracker)
