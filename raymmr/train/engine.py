"""The DeepSpeed engine, built from ``cfg.train``: its JSON config, AdamW parameter groups and the
warm-up + cosine schedule. Imported inside Ray Train workers only (``deepspeed`` at module top
breaks CPU-only actors, ray#50406), so ``deepspeed`` is imported lazily here too."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from raymmr.config import TrainConfig


def use_bf16(train_cfg: TrainConfig, on_gpu: bool) -> bool:
    """bf16 on GPU, fp32 on CPU (gloo has no bf16 all-reduce for every op), unless forced."""
    if train_cfg.precision == "auto":
        return on_gpu
    return train_cfg.precision == "bf16"


def precision_context(bf16: bool):
    """bf16 autocast around the task on GPU (DeepSpeed keeps bf16 weights; losses run in fp32);
    nothing in fp32. Training, validation and the benchmark all run their steps in it."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()


def deepspeed_config(train_cfg: TrainConfig, *, on_gpu: bool, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON for one engine. Batch sizes are per worker (micro) and accumulation.
    ``load_universal``: the engine resumes from a universal checkpoint (another world size)."""
    zero: dict = {"stage": train_cfg.zero_stage, "contiguous_gradients": True}
    if train_cfg.zero_stage >= 1:
        zero.update(overlap_comm=on_gpu, reduce_bucket_size=5e7, allgather_bucket_size=5e7)
    if train_cfg.zero_stage == 3:
        # Lets engine.save_16bit_model gather full weights for export.
        zero.update(stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=1e5)
    config = {
        "train_micro_batch_size_per_gpu": train_cfg.batch_size,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "gradient_clipping": train_cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(train_cfg, on_gpu)},
        # raymmr passes its own torch AdamW (fused on GPU); ZeRO wraps it.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    return config


def skips_nonfinite_steps(train_cfg: TrainConfig) -> bool:
    """Whether the engine itself skips an optimizer step whose gradients are not finite, on every
    rank alike (``engine.skipped_steps`` counts them): ZeRO stages 1 and 2 compute the global
    gradient norm at each step (``zero_optimization.compute_grad_norm``, on by default) and skip on
    an inf/NaN norm, in fp32 and in bf16 (``bf16.check_grad_overflow``, on by default). Checked for
    the pinned DeepSpeed by tests/test_train.py. Stage 0 and 3 get the loop's own per-micro-step check."""
    return train_cfg.zero_stage in (1, 2)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on what the model names (norms, biases, embeddings, tokens)."""
    no_decay = model.no_weight_decay()
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]  # an empty group trips DeepSpeed's scheduler hook-up


def build_optimizer(model: torch.nn.Module, train_cfg: TrainConfig, lr: float, on_gpu: bool):
    return torch.optim.AdamW(
        param_groups(model, train_cfg.weight_decay),
        lr=lr,
        betas=(train_cfg.beta1, train_cfg.beta2),
        fused=on_gpu,
    )


def lr_lambda(step: int, *, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine to ``min_ratio`` at ``total`` (constant after)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_engine(model: torch.nn.Module, train_cfg: TrainConfig, *, lr: float, total_steps: int, on_gpu: bool,
                 load_universal: bool = False):
    """Wrap ``model`` in a DeepSpeed engine with AdamW and the schedule; returns the engine."""
    import deepspeed  # see module docstring

    optimizer = build_optimizer(model, train_cfg, lr, on_gpu)
    warmup = min(train_cfg.warmup_steps, max(total_steps - 1, 0))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, total=total_steps, warmup=warmup, min_ratio=train_cfg.min_lr_ratio),
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train_cfg, on_gpu=on_gpu, load_universal=load_universal),
    )
    return engine
