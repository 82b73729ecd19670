"""Training metrics at the log interval: loss terms, learning rate, throughput, MFU, data wait.

Loss terms are summed on the device between log steps (no host sync per step); at a log step
the sums are all-reduced once (a collective on every rank) and rank 0 writes one JSON object per
log step to ``metrics.jsonl`` (``step``, ``loss`` and each term by its name in docs/SPEC.md §3), to
TensorBoard, and a progress line to the console.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from raymmr.rundir import RunDir

log = logging.getLogger("raymmr")

# Peak dense bf16 matmul rate used for MFU: measured once per process on the device.
_PEAK_FLOPS: dict[str, float] = {}


def measured_peak_flops(device: torch.device) -> float:
    """bf16 matmul FLOP/s measured on ``device`` (GPU only; 0.0 on CPU, where MFU is not reported)."""
    if device.type != "cuda":
        return 0.0
    key = str(device)
    if key not in _PEAK_FLOPS:
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize(device)
        iters = 20
        t0 = time.perf_counter()
        for _ in range(iters):
            a @ b
        torch.cuda.synchronize(device)
        _PEAK_FLOPS[key] = 2 * n**3 * iters / (time.perf_counter() - t0)
    return _PEAK_FLOPS[key]


# Dense bf16 tensor-core peak (no sparsity) from NVIDIA's datasheets, TFLOP/s, by a part of the name
# torch.cuda.get_device_name reports. Checked in order: the first match wins, so a variant's name
# ("H100 PCIe", "L40S") comes before the name it contains ("H100", "L4").
DATASHEET_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200 NVL", 835.0),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def datasheet_peak_flops(device_name: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s for a GPU by name; None for a GPU not in the table."""
    return next((tflops * 1e12 for part, tflops in DATASHEET_BF16_TFLOPS if part in device_name), None)


def console(line: str) -> None:
    """A line on the worker's stdout, once. (Ray Train patches ``print`` in workers to tee into
    its logger as well, which shows every progress line twice on the driver.)"""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class TermAccumulator:
    """Sums named scalar tensors on their device; ``reduce`` averages over steps and ranks."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            if name.startswith("n_") or not torch.is_tensor(value) or value.dim() != 0:
                continue
            v = value.detach().float()
            self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        self.count += 1

    def reduce(self, world_size: int) -> dict[str, float]:
        if not self.sums:
            return {}
        names = sorted(self.sums)
        vec = torch.stack([self.sums[n] for n in names]) / max(self.count, 1)
        if world_size > 1:
            dist.all_reduce(vec)
            vec /= world_size
        values = vec.tolist()  # the one host sync per log interval
        self.sums, self.count = {}, 0
        return dict(zip(names, values))


class MetricsWriter:
    """Rank 0's sink: metrics.jsonl (appended, one object per log step), TensorBoard, console, and
    the driver's MLflow or W&B run when ``train.tracker`` names one (``cfg``: the run's config, which
    a W&B run records).
    ``sync`` copies both to the run URL (at every report); a rank 0 that starts on another node
    continues the URL's metrics.jsonl, not a stale copy of its own."""

    def __init__(self, run_dir: RunDir, stage: str, total_steps: int, resume_step: int = 0, tracker=None,
                 cfg=None):
        self.run_dir = run_dir
        self.tracked = None  # train.tracker: the MLflow or W&B run (tracking.metrics_log)
        if tracker is not None:
            from raymmr.train.tracking import metrics_log

            self.tracked = metrics_log(tracker, stage, cfg, run_dir)
        self.path = run_dir.fetch("metrics.jsonl")
        truncate_after(self.path, resume_step)
        self.stage = stage
        self.total_steps = total_steps
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            # After a restart from the checkpoint at resume_step, the events the lost attempt wrote
            # past it are purged (TensorBoard hides them), so every step appears once.
            self.tb = SummaryWriter(str(run_dir.local / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # tensorboard is a dependency; keep training if a broken install lacks it
            log.warning("tensorboard is not importable; metrics go to %s only", self.path)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{self.stage}/{k}", v, record["step"])
            self.tb.flush()
        if self.tracked is not None:
            self.tracked.write(record)
        console(self.progress_line(record))

    def progress_line(self, r: dict) -> str:
        parts = [f"[{self.stage}] step {r['step']}/{self.total_steps}"]
        for key, fmt in [("loss", "{:.4f}"), ("lr", "{:.2e}"), ("samples_per_s", "{:.1f}"), ("tflops", "{:.2f}"),
                         ("mfu", "{:.1%}"), ("data_wait", "{:.1%}"), ("val_loss", "{:.4f}"),
                         ("val_vqa_accuracy", "{:.3f}")]:
            if key in r:
                parts.append(f"{key} " + fmt.format(r[key]))
        return " | ".join(parts)

    def sync(self) -> None:
        self.run_dir.upload("metrics.jsonl")
        self.run_dir.upload("tensorboard")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.tracked is not None:
            self.tracked.close()
        self.sync()


def truncate_after(path: Path, step: int) -> None:
    """Drop log lines past ``step``: after a restart from the checkpoint at ``step`` the run
    logs those steps again, and the log must read as one run with no gaps or repeats."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
