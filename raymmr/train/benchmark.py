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
from torch.profiler import record_function

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


PROFILE_STEPS = 3
PROFILE_ROWS = 30


def benchmark(cfg: Config, *, stage: str, data: str, steps: int, warmup: int, plain: bool = False,
              profile: bool = False) -> dict:
    """Time ``steps`` optimizer steps after ``warmup`` ones; returns one result row. The model,
    task and loader are built as a training rank builds them (``raymmr.train.setup``), on this
    process's GPU when there is one. ``plain``: the same model, task and loader in a plain PyTorch
    loop instead (torch AdamW, gradient clipping, the same autocast; no DeepSpeed, no Ray): the
    baseline raymmr's step is measured against (row ``zero_stage`` "plain"). ``profile``: then
    ``PROFILE_STEPS`` more steps under ``torch.profiler``; the row's ``profile`` holds the table of
    the ops that took the most device time (CPU time on CPU), the step's parts (``step/data``,
    ``step/forward``, ``step/backward``, ``step/optimizer``, ``step/momentum``) among them."""
    from raymmr.data.loader import make_loader
    from raymmr.objective.flops import training_flops_per_sample
    from raymmr.train.engine import build_engine, build_optimizer, precision_context, use_bf16
    from raymmr.train.metrics import datasheet_peak_flops, measured_peak_flops
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
            with record_function("step/data"):
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
            with record_function("step/forward"), precision_context(bf16):
                terms = task(engine.module, batch)
            with record_function("step/backward"):
                engine.backward(terms["loss"])
            with record_function("step/optimizer"):
                engine.step()
        with record_function("step/momentum"):
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
    table = profile_table(step, on_gpu) if profile else None
    peak = measured_peak_flops(device)
    name = device_name()
    datasheet = datasheet_peak_flops(name) if on_gpu else None
    tflops = samples * flops / elapsed / 1e12
    return {
        "stage": stage, "preset": cfg.preset, "zero_stage": "plain" if plain else cfg.train.zero_stage,
        "batch_size": cfg.train.batch_size,
        "grad_accum": cfg.train.grad_accum, "precision": "bf16" if bf16 else "fp32", "compile": cfg.train.compile,
        "device": name, "params_trainable": n_params,
        "gflops_per_sample": flops / 1e9, "samples_per_s": samples / elapsed, "tflops": tflops,
        "peak_tflops_measured": peak / 1e12, "mfu": tflops * 1e12 / peak if peak else None,
        "peak_tflops_datasheet": datasheet / 1e12 if datasheet else None,
        "mfu_datasheet": tflops * 1e12 / datasheet if datasheet else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "data_wait": wait / elapsed, "steps": steps, **({"profile": table} if table else {}),
    }


def profile_table(step, on_gpu: bool) -> str:
    """``PROFILE_STEPS`` calls of ``step`` under ``torch.profiler``: the ``PROFILE_ROWS`` ops with
    the most self time on the device (on the CPU without a GPU), as torch's table."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILE_STEPS):
            step()
        if on_gpu:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_device_time_total" if on_gpu else "self_cpu_time_total",
                                     row_limit=PROFILE_ROWS)


def device_name() -> str:
    """The device a row was measured on: the GPU's name, else "cpu"."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def failed_row(cfg: Config, stage: str, zero, error: BaseException) -> dict:
    """The row of a configuration that could not run (out of memory, a compile error): what it was
    and the error's first line, so a grid's table says why a cell is empty."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"stage": stage, "preset": cfg.preset, "zero_stage": zero, "batch_size": cfg.train.batch_size,
            "grad_accum": cfg.train.grad_accum, "compile": cfg.train.compile,
            "device": device_name(), "error": f"{type(error).__name__}: {first}"[:300]}


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
    """Each DeepSpeed row gets ``vs_plain``: its samples/s over the plain loop's at the same stage,
    batch size and compile setting, measured in the same run (None without such a plain row)."""
    plain = {(r["stage"], r["batch_size"], r.get("compile")): r["samples_per_s"] for r in rows
             if r["zero_stage"] == "plain" and "error" not in r}
    for r in rows:
        base = plain.get((r["stage"], r["batch_size"], r.get("compile")))
        r["vs_plain"] = r["samples_per_s"] / base if base and r["zero_stage"] != "plain" and "error" not in r else None
    return rows


def commit() -> str:
    """The commit measured: ``RAYMMR_COMMIT`` when set (a copy of the tree without .git, as sent to a
    GPU machine), else git's short hash, else "unknown"."""
    if os.environ.get("RAYMMR_COMMIT"):
        return os.environ["RAYMMR_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


TABLE_HEADER = "## Training step (one device)"
TABLE_COLUMNS = ("| date | device | commit | stage | ZeRO | batch | precision | compile | samples/s | TFLOP/s | "
                 "MFU (measured peak) | MFU (datasheet peak) | peak mem GB | data wait | command | vs plain |")


def append_markdown(rows: list[dict], path: str, command: str) -> None:
    """Append one table row per result to BENCHMARKS.md under the step-benchmark section."""
    from raymmr.data.benchmark import append_table_rows

    date = time.strftime("%Y-%m-%d")
    lines = []
    for r in rows:
        head = (f"| {date} | {r['device']} | {commit()} | {r['stage']} | {r['zero_stage']} | {r['batch_size']} | "
                f"{r.get('precision', '—')} | {'on' if r.get('compile') else 'off'} |")
        if "error" in r:
            cells = " — | — | — | — | — | — |"
            last = f"failed: {r['error']}".replace("|", "/")
        else:
            mem = f"{r['peak_memory_gb']:.1f}" if r["peak_memory_gb"] is not None else "n/a"
            cells = (f" {r['samples_per_s']:.1f} | {r['tflops']:.2f} | {mfu_cell(r.get('mfu'), r)} | "
                     f"{mfu_cell(r.get('mfu_datasheet'), r, r.get('peak_tflops_datasheet'))} | {mem} | "
                     f"{100 * r['data_wait']:.1f}% |")
            last = vs_plain(r)
        lines.append(f"{head}{cells} `{command}` | {last} |")
    append_table_rows(Path(path), TABLE_HEADER, TABLE_COLUMNS + "\n" + "|---" * TABLE_COLUMNS.count(" | ") + "|---|",
                      lines)


def mfu_cell(mfu: float | None, row: dict, peak_tflops: float | None = None) -> str:
    """An MFU as a percentage, with the peak it is measured against when given; "n/a" and why otherwise."""
    if row["device"] == "cpu":
        return "n/a (CPU)"
    if mfu is None:
        return "n/a (no datasheet peak for this device: add it to train.metrics.DATASHEET_BF16_TFLOPS)"
    return f"{100 * mfu:.1f}%" + (f" of {peak_tflops:.0f}" if peak_tflops else "")


def vs_plain(row: dict) -> str:
    """The markdown cell: the plain loop itself, or this step's speed as a ratio to it (overhead)."""
    if row["zero_stage"] == "plain":
        return "the plain PyTorch loop (no DeepSpeed)"
    ratio = row.get("vs_plain")
    return "—" if ratio is None else f"{ratio:.2f}x the plain loop (overhead {100 * (1 - ratio):+.1f}%)"


def append_profile(path: str, row: dict, table: str) -> None:
    """Add one configuration's profile table to the text file ``path`` (a local path or a URL),
    under a line naming it."""
    from raymmr import storage

    title = (f"== {row['stage']} {row['preset']}: ZeRO {row['zero_stage']}, batch {row['batch_size']}, "
             f"compile {'on' if row.get('compile') else 'off'}, {row['device']}, "
             f"{PROFILE_STEPS} steps after the timed ones ==")
    before = storage.read_text(path) if storage.exists(path) else ""
    storage.write_text(path, f"{before}{title}\n{table}\n")


def json_path(out: str) -> str:
    """Where a run's rows go: ``benchmark-<time>.json`` in ``out`` (a directory or a URL)."""
    from raymmr import storage

    return storage.join(storage.normalize(out), f"benchmark-{time.strftime('%Y%m%d-%H%M%S')}.json")


def write_json(rows: list[dict], path: str) -> None:
    """The rows so far, rewritten whole at ``path`` after each configuration."""
    from raymmr import storage

    storage.write_text(path, json.dumps(rows, indent=1))
