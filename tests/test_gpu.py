"""The GPU path end to end, on a CUDA machine (``scripts/gpu_check.sh`` runs ``pytest -m gpu``;
skipped on CPU): the tiny pipeline pre-trains, fine-tunes and evaluates on one GPU in bf16 with
NCCL and ZeRO-2, and each stage ends with an export verified against the live model."""

import json

import pytest
import torch

from raymmr.config import load_config
from raymmr.pipeline import run_pipeline

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_tiny_pipeline_on_one_gpu_in_bf16_with_nccl_and_zero2(ray_local, tiny_data, tmp_path):
    cfg = load_config("tiny", ["train.gpus_per_worker=1", "train.zero_stage=2", "train.steps=30",
                               "finetune.steps=20", "train.val_every=10", "train.checkpoint_every=10"])
    results = run_pipeline(cfg, tmp_path / "run", tiny_data, text_only=False, severities=("strong",))["val"]
    assert 0 <= results["vqa_overall"] <= 1 and results["retrieval_mean_rank"] > 0
    for stage in ("pretrain", "finetune"):
        events = [json.loads(line) for line in (tmp_path / "run" / stage / "events.jsonl").read_text().splitlines()]
        started = [e for e in events if e["event"] == "worker_started"]
        assert started and all(e["device"].startswith("cuda") and e["precision"] == "bf16" and e["backend"] == "nccl"
                               for e in started), started
        metrics = [json.loads(line) for line in (tmp_path / "run" / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [m["loss"] for m in metrics if "loss" in m]
        assert losses and all(loss == loss and abs(loss) < 1e4 for loss in losses), losses
        assert (tmp_path / "run" / stage / "export" / "model.safetensors").is_file()
