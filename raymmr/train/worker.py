"""The per-worker training function that Ray Train runs on every rank.

Each rank streams its own split of the shards, runs a DeepSpeed engine built from the config,
and every rank calls the collectives (checkpoint save, validation, ``ray.train.report``) equally
often. The loop is ``train_loop_per_worker``; everything it calls is a named helper below or in
``raymmr.train.{engine,checkpoint,metrics,setup}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time

import torch
import torch.distributed as dist

from raymmr.config import Config
from raymmr.eval.metrics import retrieval_ranks, vqa_hits
from raymmr.rundir import RunDir
from raymmr.train import checkpoint as ckpt
from raymmr.train.engine import precision_context, skips_nonfinite_steps
from raymmr.train.job import TrainJob
from raymmr.train.metrics import MetricsWriter, TermAccumulator, console
from raymmr.train.setup import LOADER_STATE, WorkerContext, build_worker_context

log = logging.getLogger("raymmr")


class NonFiniteLossError(RuntimeError):
    pass


def train_loop_per_worker(config: dict) -> None:
    job: TrainJob = config["job"]

    w = build_worker_context(job)
    cfg, engine = w.cfg, w.engine
    record_worker(w)
    start = restore(w)
    writer = MetricsWriter(RunDir(job.run_dir), w.stage, w.total_steps, resume_step=start,
                           tracker=job.tracker, cfg=cfg) if w.rank == 0 else None
    terms_acc, timer = TermAccumulator(), StepTimer(w.device)
    last_val: dict = {}
    nonfinite = 0
    # ZeRO 1/2: DeepSpeed checks the global gradient norm at each optimizer step and skips a
    # non-finite step on every rank; the loop needs no host sync of its own (see engine.py).
    engine_skips = skips_nonfinite_steps(cfg.train)
    for step in range(start + 1, w.total_steps + 1):
        micro, pending, skipped_before = 0, [], engine.skipped_steps
        while micro < cfg.train.grad_accum:
            batch = timer.next_batch(w.batches)
            record_keys(job, step, w.rank, batch)
            with precision_context(w.bf16):
                terms = w.task(engine.module, batch)
            if not engine_skips and not finite_on_all_ranks(terms["loss"], w.world_size):
                nonfinite = count_nonfinite(nonfinite, step, terms, cfg, timer)
                continue
            engine.backward(terms["loss"])
            engine.step()
            micro += 1
            pending.append(terms)
        if engine.skipped_steps > skipped_before:  # DeepSpeed found non-finite gradients: no update
            nonfinite = count_nonfinite(nonfinite, step, terms, cfg, timer)
        else:
            nonfinite = 0
            for t in pending:
                terms_acc.add(t)
        w.momentum.update()
        timer.step_done(cfg.train.batch_size * cfg.train.grad_accum * w.world_size)
        if step % cfg.train.log_every == 0 or step == w.total_steps:
            record = {"step": step, **terms_acc.reduce(w.world_size), "lr": engine.get_lr()[0]}
            record.update(timer.summary(w.flops_per_sample, w.peak_flops, w.world_size))
            if writer:
                writer.write(record)
        val_due = cfg.train.val_every and (step % cfg.train.val_every == 0 or step == w.total_steps)
        if val_due:
            last_val = validate(w)
            if writer:
                writer.write({"step": step, **last_val})
        if step % cfg.train.checkpoint_every == 0 or step == w.total_steps or val_due:
            report = {**last_val, "step": step}
            if job.rung_offset is not None:  # a Tune trial: ASHA's clock (see launch.run_training)
                report["rung"] = job.rung_offset + step * cfg.tune.rungs / w.total_steps
            if writer:
                writer.sync()  # metrics and TensorBoard in the run URL, for whoever watches the run
            # The last checkpoint carries the live model's probe outputs: the driver checks its export
            # against them, wherever this rank ran.
            probe = probe_live_model(w, job) if step == w.total_steps else None
            save_and_report(w, step, report, with_checkpoint=step % cfg.train.checkpoint_every == 0 or step == w.total_steps,
                            probe=probe)
    if writer:
        writer.close()


# --------------------------------------------------------------------------- helpers


def count_nonfinite(nonfinite: int, step: int, terms: dict, cfg: Config, timer) -> int:
    """One more consecutive non-finite step (counted in the metrics); stops the run at
    ``train.max_nonfinite_steps``."""
    nonfinite += 1
    timer.nonfinite += 1
    if nonfinite >= cfg.train.max_nonfinite_steps:
        raise NonFiniteLossError(
            f"{nonfinite} consecutive non-finite losses at step {step} (terms: "
            f"{ {k: float(v) for k, v in terms.items() if torch.is_tensor(v) and v.dim() == 0} }); "
            "lower train.lr or check the data"
        )
    return nonfinite


def finite_on_all_ranks(loss: torch.Tensor, world_size: int) -> bool:
    """One scalar sync per micro step, so that every rank agrees to skip a bad batch together
    (a rank that skipped alone would desynchronise ZeRO's gradient collectives). Only where
    DeepSpeed does not skip non-finite steps itself (ZeRO 0 and 3)."""
    ok = torch.isfinite(loss.detach()).float()
    if world_size > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class StepTimer:
    """Per log interval (each figure of a metrics record covers the steps since the one before):
    wall time, time blocked on the loader, samples, samples the loader skipped as unusable and
    non-finite losses, summed over ranks. A run's totals are the sums over its records."""

    def __init__(self, device: torch.device):
        self.device = device
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.samples = 0
        self.skipped = 0
        self.nonfinite = 0

    def next_batch(self, batches):
        t = time.perf_counter()
        batch = next(batches)
        self.wait += time.perf_counter() - t
        self.skipped += int(batch.pop("skipped", 0))
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def step_done(self, global_samples: int) -> None:
        self.samples += global_samples

    def summary(self, flops_per_sample: float, peak_flops: float, world_size: int) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self.t0
        skipped = torch.tensor([self.skipped, self.nonfinite], dtype=torch.float64, device=self.device)
        if world_size > 1:
            dist.all_reduce(skipped)
        out = {
            "samples_per_s": self.samples / elapsed,
            "tflops": self.samples * flops_per_sample / elapsed / 1e12,
            "data_wait": self.wait / elapsed,
            "skipped_samples": int(skipped[0]),
            "nonfinite_steps": int(skipped[1]),
        }
        if peak_flops:
            out["mfu"] = out["tflops"] * 1e12 / world_size / peak_flops
        self.t0, self.wait, self.samples, self.skipped, self.nonfinite = time.perf_counter(), 0.0, 0, 0, 0
        return out


def restore(w: WorkerContext) -> int:
    """Load the resume point ``build_worker_context`` found (Ray's latest checkpoint of this launch
    after a restart, else the ``--resume`` one), through its universal conversion when the world
    size changed; returns the last completed step (0 for a fresh run)."""
    point = w.resume
    if point is None:
        return 0
    meta, state = ckpt.load(w.engine, point.source, world_size=w.world_size, universal=point.universal)
    if meta.stage != w.stage:
        raise ckpt.CheckpointError(f"checkpoint {point.source} is from {meta.stage}, not {w.stage}")
    step = int(state.get("step", meta.step))
    momentum = w.momentum.restore(point.source, rank=w.rank, same_world=meta.world_size == w.world_size)
    # Masks, mixup draws and dropout continue their streams instead of replaying step 1's.
    rng = ckpt.restore_rng(point.source, rank=w.rank, same_world=meta.world_size == w.world_size)
    if w.rank == 0:
        event = {"event": "resumed", "step": step, "checkpoint": point.source, "world_size": w.world_size,
                 "checkpoint_world_size": meta.world_size, "universal": point.universal is not None,
                 "optimizer_steps": optimizer_steps(w.engine), "momentum_ema": momentum, "rng_restored": rng}
        how = f" via its universal conversion ({meta.world_size} -> {w.world_size} workers)" if point.universal else ""
        console(f"[{w.stage}] resumed from {point.source} at step {step}{how} "
                f"(optimizer state at {event['optimizer_steps']} steps)")
        RunDir(w.extra["run_dir"]).append_lines("events.jsonl", [json.dumps(event)])
    return step


def optimizer_steps(engine) -> int:
    """Adam's own step counter from the (possibly ZeRO-wrapped) optimizer state: evidence that the
    optimizer state, not only the weights, came back from the checkpoint."""
    opt = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in opt.state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def record_worker(w: WorkerContext) -> None:
    """One line per rank in events.jsonl: where each worker ran (node, device). The ranks' lines
    reach rank 0 through the process group (ranks on other nodes share no disk with it)."""
    import ray

    event = {"event": "worker_started", "rank": w.rank, "world_size": w.world_size, "pid": os.getpid(),
             "node_id": ray.get_runtime_context().get_node_id(), "device": str(w.device),
             "precision": "bf16" if w.bf16 else "fp32", "backend": dist.get_backend() if dist.is_initialized() else None,
             "data_epoch": w.data_position.epoch}
    events = [None] * w.world_size
    if w.world_size > 1:
        dist.all_gather_object(events, event)  # our own ranks' small dicts
    else:
        events = [event]
    if w.rank == 0:
        RunDir(w.extra["run_dir"]).append_lines("events.jsonl", [json.dumps(e) for e in events])


def save_and_report(w: WorkerContext, step: int, metrics: dict, with_checkpoint: bool, probe: dict | None = None) -> None:
    """Every rank saves its shard (collective) and reports (a barrier) equally often. Rank 0 puts
    ``probe`` (see ``probe_live_model``) into its part of the checkpoint."""
    import ray.train
    from ray.train import Checkpoint
    from safetensors.torch import save_file

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    meta = ckpt.CheckpointMeta(step=step, world_size=w.world_size, zero_stage=w.cfg.train.zero_stage, stage=w.stage)
    path = ckpt.save(w.engine, meta, w.rank, client_state={"step": step})
    try:
        position = {"world_size": w.world_size, **w.data_position.to_dict()}
        with open(os.path.join(path, LOADER_STATE.format(rank=w.rank)), "w") as f:
            json.dump(position, f)
        if probe is not None and w.rank == 0:
            save_file(probe, os.path.join(path, ckpt.PROBE))
        w.momentum.save(path, w.rank)
        ckpt.save_rng(path, w.rank)
        ckpt.seal(path, w.rank, step)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(path), checkpoint_dir_name=f"step_{step:07d}")
    finally:
        # The synchronous report has copied the part to the run's storage: the node's copy would
        # otherwise stay in its temp dir, a full model and optimizer state per checkpoint.
        shutil.rmtree(path, ignore_errors=True)


@torch.no_grad()
def validate(w: WorkerContext) -> dict:
    """Validation loss, VQA accuracy (also of the cross-domain questions alone, those of a domain
    training never sees: ``val_vqa_accuracy_cross_domain``) and retrieval mean rank on the held-out
    split, by the definitions evaluation uses (``raymmr.eval.metrics``, ``shards.training_domains``):
    accuracy over every VQA sample (a gold
    answer outside the vocabulary counts as wrong), mean rank of both directions with pessimistic
    ties, each caption ranked against all the captions of this rank's validation part (a pool of a
    few in-batch captions makes the rank too coarse to compare trials).

    Runs on ALL ranks (each on its own part of the split, the same number of batches everywhere):
    under ZeRO-3 every forward gathers parameters collectively, so rank-0-only evaluation hangs."""
    model = w.engine.module
    was_training = model.training
    model.eval()
    acc = TermAccumulator()
    # correct, answered, rank sum, ranked, correct and answered cross-domain
    sums = torch.zeros(6, dtype=torch.float64, device=w.device)
    cross_ids = torch.tensor(w.cross_domain_ids, dtype=torch.long, device=w.device)
    images, texts, captions = [], [], []  # caption pairs' embeddings, pair i <-> i, and their token ids (a group each)
    for batch in w.val_batches():
        batch.pop("skipped", None)
        batch.pop("position", None)
        batch = {k: v.to(w.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with precision_context(w.bf16):
            acc.add(w.task(model, batch))
            logits = model.answer_logits(batch["image"], batch["text_ids"], batch["text_mask"])
        correct, answered = vqa_hits(logits, batch["answer"], ~batch["is_caption"])
        sums[0] += correct
        sums[1] += answered
        cross = torch.isin(batch["domain"], cross_ids)
        correct, answered = vqa_hits(logits, batch["answer"], ~batch["is_caption"] & cross)
        sums[4] += correct
        sums[5] += answered
        # Whole batches through the towers on every rank (ZeRO-3 gathers parameters collectively,
        # so the number of forwards must not depend on how many captions a rank drew).
        cap = batch["is_caption"]
        with precision_context(w.bf16):
            images.append(model.encode_image(batch["image"]).float()[cap])
            texts.append(model.encode_text(batch["text_ids"], batch["text_mask"]).float()[cap])
        captions += [tuple(ids[m.bool()].tolist()) for ids, m in zip(batch["text_ids"][cap], batch["text_mask"][cap])]
    if sum(len(x) for x in images) > 0:
        # Identical captions (a template set repeats them) are one text: retrieving any of them is a hit.
        i2t, t2i = retrieval_ranks(torch.cat(images) @ torch.cat(texts).T, text_groups=captions)
        sums[2] += (i2t.sum() + t2i.sum()).item() / 2
        sums[3] += i2t.numel()
    terms = acc.reduce(w.world_size)
    if w.world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    out = {f"val_{k}": v for k, v in terms.items()}
    # A metric this split cannot give (no VQA sample; no caption, as in fine-tuning, which reads VQA
    # only) is absent, never 0: a sweep must not rank trials on a constant.
    if sums[1] > 0:
        out["val_vqa_accuracy"] = float(sums[0] / sums[1])
    if sums[3] > 0:
        out["val_retrieval_mean_rank"] = float(sums[2] / sums[3])
    if sums[5] > 0:
        out["val_vqa_accuracy_cross_domain"] = float(sums[4] / sums[5])
    return out


@torch.no_grad()
def probe_live_model(w: WorkerContext, job: TrainJob) -> dict:
    """Answer logits and embeddings of the final live model on a fixed synthetic input (fp32, CPU);
    the driver checks that the exported weights reproduce them. Every rank runs the forward (a
    collective under ZeRO-3)."""
    model = w.engine.module
    was_training = model.training
    model.eval()
    inputs = probe_inputs(w.cfg, vocab_size=job.vocab_size, device=w.device)
    with precision_context(w.bf16):
        out = probe_outputs(model, inputs)
    model.train(was_training)
    return {k: v.float().cpu().contiguous() for k, v in out.items()}


def probe_inputs(cfg: Config, *, vocab_size: int, device) -> dict:
    g = torch.Generator().manual_seed(1234)
    s = cfg.data.image_size
    images = torch.randint(0, 256, (4, 3, s, s), generator=g, dtype=torch.uint8)
    ids = torch.randint(5, vocab_size, (4, cfg.model.max_text_len), generator=g)
    mask = torch.ones_like(ids)
    return {"image": images.to(device), "text_ids": ids.to(device), "text_mask": mask.to(device)}


def probe_outputs(model, x: dict) -> dict:
    return {
        "answer_logits": model.answer_logits(x["image"], x["text_ids"], x["text_mask"]),
        "image_embedding": model.encode_image(x["image"]),
        "text_embedding": model.encode_text(x["text_ids"], x["text_mask"]),
    }


def record_keys(job: TrainJob, step: int, rank: int, batch: dict) -> None:
    """Testing hook: ``RAYMMR_KEY_LOG=PATH`` appends each consumed batch's sample keys to
    ``PATH.rank<r>``, with a digest of the global torch RNG state the step's masks and mixup draws
    come from, so a test can compare the sequences a killed-and-restarted run consumed and drew."""
    path = job.key_log
    if path:
        rng = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]
        with open(f"{path}.rank{rank}", "a") as f:  # a leading newline: a line cut by a kill stays alone
            f.write("\n" + json.dumps({"step": step, "keys": batch["key"], "rng": rng}))
