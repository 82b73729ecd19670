"""The end-to-end pipeline on one shard set: pre-train -> fine-tune -> evaluate.

Used by `make demo` (jobs/demo.py), the ablation (jobs/ablate.py) and the learning test, so all
three exercise exactly the code a user runs.

The protocol (docs/SPEC.md §5, DomainBed): every choice is made on the **validation** split, so the
pipeline always evaluates ``val`` (role "selection"); the **test** split is evaluated only when the
caller says its choices are fixed (``final_test``, role "final"), and each results file names its
split and role. Beside the model, the same pre-training is fine-tuned on blank images (the
text-only model, ``data.blank_images``): the strongest text-only baseline a margin is stated against.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

from raymmr import storage
from raymmr.config import Config

SELECTION_SPLIT = "val"  # every choice (presets, decisions, a sweep's best, the ablation's reading)
FINAL_SPLIT = "test"  # evaluated once, after the choices are fixed


def text_only_config(cfg: Config) -> Config:
    """The same fine-tuning with every image blank: what the model learns from the wording alone."""
    return replace(cfg, data=replace(cfg.data, blank_images=True))


def run_pipeline(cfg: Config, out: str | Path, data: str, *, num_workers=None, pretrained: str | None = None,
                 text_only: bool | str = True, final_test: bool = False, severities=None, log=print) -> dict:
    """Train and evaluate into ``out/{pretrain,finetune,finetune_text_only,eval/<split>}`` (a path or
    URL); returns ``{split: results}`` for ``val`` and, with ``final_test``, ``test``.

    ``pretrained``: the export of a pre-training with this same config, reused instead of
    pre-training again (the ablation's variants that differ only in fine-tuning share one).
    ``text_only``: True fine-tunes the text-only model here (from the same pre-training); a path or
    URL reuses that export; False evaluates without it. ``severities``: the seen-perturbation
    severities evaluated besides clean inputs (default: all; ``()``: clean only)."""
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
    blank = text_only if isinstance(text_only, str) else None
    if text_only is True:
        log(f"[pipeline] fine-tuning the text-only model (blank images) -> {stage('finetune_text_only')}")
        blank = run_training(text_only_config(cfg), stage="finetune", out=stage("finetune_text_only"), data=data,
                             init_from=pretrained, num_workers=num_workers).export_dir
    results = {}
    for split, role in ((SELECTION_SPLIT, "selection"), *([(FINAL_SPLIT, "final")] if final_test else [])):
        log(f"[pipeline] evaluating on the {split} split ({role}) -> {stage('eval', split)}")
        results[split] = evaluate(
            fin.export_dir, data, stage("eval", split), split=split, role=role, blank_export=blank,
            severities=SEVERITIES if severities is None else severities, progress=True, card=role == "final",
        )
    return results
