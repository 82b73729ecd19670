"""The end-to-end pipeline on one shard set: pre-train -> fine-tune -> evaluate.

Used by `make demo` (jobs/demo.py), the ablation (jobs/ablate.py) and the learning test, so all
three exercise exactly the code a user runs."""

from __future__ import annotations

import functools
from pathlib import Path

from raymmr import storage
from raymmr.config import Config


def run_pipeline(cfg: Config, out: str | Path, data: str, *, num_workers=None, pretrained: str | None = None,
                 severities=None, log=print) -> dict:
    """Train and evaluate into ``out/{pretrain,finetune,eval}`` (a path or URL); returns the evaluation results.
    ``pretrained``: the export of a pre-training with this same config, reused instead of
    pre-training again (the ablation's variants that differ only in fine-tuning share one).
    ``severities``: the perturbation severities evaluated besides clean inputs (default: all)."""
    from raymmr.eval.evaluate import SEVERITIES, evaluate
    from raymmr.train.launch import run_training

    stage = functools.partial(storage.join, storage.normalize(str(out)))
    if pretrained is None:
        log(f"[pipeline] pre-training {cfg.train.steps} steps -> {stage('pretrain')}")
        pretrained = run_training(cfg, stage="pretrain", out=stage("pretrain"), data=data,
                                  num_workers=num_workers).export_dir
    else:
        log(f"[pipeline] reusing the pre-training in {pretrained}")
    log(f"[pipeline] fine-tuning {cfg.finetune.steps} steps -> {stage('finetune')}")
    fin = run_training(cfg, stage="finetune", out=stage("finetune"), data=data, init_from=pretrained,
                       num_workers=num_workers)
    log(f"[pipeline] evaluating on the test split -> {stage('eval')}")
    return evaluate(fin.export_dir, data, stage("eval"), severities=SEVERITIES if severities is None else severities,
                    progress=True, card=True)
