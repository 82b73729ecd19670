"""One-device step benchmark: samples/s, model TFLOP/s, MFU, peak memory and data-wait fraction
of the pre-training or fine-tuning step, with the real WebDataset loader, through the same
DeepSpeed engine and task the trainer uses. FLOPs per sample come from the model's own count;
peak = the bf16 matmul rate measured on the device (``measured_peak_flops``).

Runs without Ray: a one-process gloo/nccl group is set up here so DeepSpeed can start.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import torch

from raymmr.config import Config


def init_single_process_group(backend: str) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def benchmark(cfg: Config, *, stage: str, data: str, steps: int, warmup: int, plain: bool = False) -> dict:
    """Time ``steps`` optimizer steps after ``warmup`` ones; returns one result row. The model,
    task and loader are built as a training rank builds them (``raymmr.train.setup``), on this
    process's GPU when there is one. ``plain``: the same model, task and loader in a plain PyTorch
    loop instead (torch AdamW, gradient clipping, the same autocast; no DeepSpeed, no Ray): the
    baseline raymmr's step is measured against (row ``zero_stage`` "plain")."""
    from raymmr.data.loader import make_loader
    from raymmr.objective.flops import training_flops_per_sample
    from raymmr.train.engine import build_engine, build_optimizer, precision_context, use_bf16
    from raymmr.train.metrics import measured_peak_flops
    from raymmr.train.momentum import MomentumEMA
    from raymmr.train.setup import compile_model, new_model, stage_loader_args, stage_task, stage_urls

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    init_single_process_group("nccl" if on_gpu else "gloo")
    torch.manual_seed(cfg.train.seed)
    model, tokenizer, manifest = new_model(cfg, data)
    compile_model(model.to(device), cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops = training_flops_per_sample(model, stage, cfg.loss, cfg.masking, cfg.finetune)
    if plain:
        engine = PlainStep(model, build_optimizer(model, cfg.train, cfg.train.lr, on_gpu), cfg.train)
    else:
        engine = build_engine(model, cfg.train, lr=cfg.train.lr, total_steps=steps + warmup, on_gpu=on_gpu)
    bf16 = use_bf16(cfg.train, on_gpu)
    momentum = MomentumEMA(model, zero3=cfg.train.zero_stage == 3)
    task = stage_task(cfg, stage)
    loader = make_loader(
        stage_urls(data, stage, manifest), epoch_mode="resampled", samples_per_epoch=10**9, seed=0, epoch=0,
        **stage_loader_args(cfg, stage, tokenizer, manifest, rank=0, world_size=1),
    )
    batches = iter(loader)

    def step() -> float:
        wait = 0.0
        for _ in range(cfg.train.grad_accum):
            t = time.perf_counter()
            batch = next(batches)
            wait += time.perf_counter() - t
            batch.pop("skipped", None)
            batch.pop("position", None)
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            if stage == "finetune":  # as training brings them: every sample with a partner image
                batch["partner_image"] = batch["image"].roll(1, dims=0)
                batch["has_partner"] = torch.ones(len(batch["key"]), dtype=torch.bool, device=device)
                batch["partner_similarity"] = torch.full((len(batch["key"]),), cfg.finetune.similarity_threshold,
                                                         device=device)  # a stand-in cosine
            with precision_context(bf16):
                terms = task(engine.module, batch)
            engine.backward(terms["loss"])
            engine.step()
        momentum.update()
        return wait

    for _ in range(warmup):
        step()
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    wait = sum(step() for _ in range(steps))
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    samples = steps * cfg.train.batch_size * cfg.train.grad_accum
    peak = measured_peak_flops(device)
    tflops = samples * flops / elapsed / 1e12
    return {
        "stage": stage, "preset": cfg.preset, "zero_stage": "plain" if plain else cfg.train.zero_stage,
        "batch_size": cfg.train.batch_size,
        "grad_accum": cfg.train.grad_accum, "precision": "bf16" if bf16 else "fp32", "compile": cfg.train.compile,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "params_trainable": n_params,
        "gflops_per_sample": flops / 1e9, "samples_per_s": samples / elapsed, "tflops": tflops,
        "peak_tflops_measured": peak / 1e12, "mfu": tflops * 1e12 / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "data_wait": wait / elapsed, "steps": steps,
    }


class PlainStep:
    """The engine calls the benchmark loop makes (``module``, ``backward``, ``step``), in plain
    PyTorch: gradients averaged over the accumulation steps, clipped, one optimizer step."""

    def __init__(self, model, optimizer, train_cfg):
        self.module, self.optimizer = model, optimizer
        self.grad_accum, self.grad_clip = train_cfg.grad_accum, train_cfg.grad_clip
        self.micro = 0

    def backward(self, loss) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.grad_accum:
            return
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def with_plain_ratio(rows: list[dict]) -> list[dict]:
    """Each DeepSpeed row gets ``vs_plain``: its samples/s over the plain loop's at the same stage
    and batch size, measured in the same run (None without such a plain row)."""
    plain = {(r["stage"], r["batch_size"]): r["samples_per_s"] for r in rows if r["zero_stage"] == "plain"}
    for r in rows:
        base = plain.get((r["stage"], r["batch_size"]))
        r["vs_plain"] = r["samples_per_s"] / base if base and r["zero_stage"] != "plain" else None
    return rows


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_markdown(rows: list[dict], path: str, command: str) -> None:
    """Append one table row per result to BENCHMARKS.md under the step-benchmark section."""
    p = Path(path)
    text = p.read_text() if p.exists() else "# Benchmarks\n"
    header = "## Training step (one device)"
    if header not in text:
        text += (f"\n{header}\n\n| date | device | commit | stage | ZeRO | batch | precision | samples/s | "
                 "TFLOP/s | MFU | peak mem GB | data wait | command | vs plain |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    date = time.strftime("%Y-%m-%d")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (CPU)"
        mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a"
        row = (f"| {date} | {r['device']} | {commit()} | {r['stage']} | {r['zero_stage']} | {r['batch_size']} | "
               f"{r['precision']} | {r['samples_per_s']:.1f} | {r['tflops']:.2f} | {mfu} | {mem} | "
               f"{100 * r['data_wait']:.1f}% | `{command}` | {vs_plain(r)} |\n")
        # insert right after this section's table header (keep other sections intact)
        start = text.index(header)
        nxt = text.find("\n## ", start + len(header))
        text = text + row if nxt == -1 else text[:nxt] + row + text[nxt:]
    p.write_text(text)


def vs_plain(row: dict) -> str:
    """The markdown cell: the plain loop itself, or this step's speed as a ratio to it (overhead)."""
    if row["zero_stage"] == "plain":
        return "the plain PyTorch loop (no DeepSpeed)"
    ratio = row.get("vs_plain")
    return "—" if ratio is None else f"{ratio:.2f}x the plain loop (overhead {100 * (1 - ratio):+.1f}%)"


def write_json(rows: list[dict], out: str) -> str:
    """The rows as ``benchmark-<time>.json`` in ``out`` (a directory or a URL); returns where."""
    from raymmr import storage

    f = storage.join(storage.normalize(out), f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}.json")
    storage.write_text(f, json.dumps(rows, indent=1))
    return f
