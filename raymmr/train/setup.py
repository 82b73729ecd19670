"""Everything a worker builds before its loop: config, device, data, model, engine, task.

Kept apart from ``worker.py`` so the loop reads as a loop. Fine-tuning's two builders live in
rooms of their own: the initial weights from a pre-training export (``initial_weights``) and the
similar-image index with the partners drawn from it (``partners``), the one builder that starts
collectives (every rank builds the index together).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raymmr.config import Config
from raymmr.train.job import TrainJob
from raymmr.train.metrics import console
from raymmr.train.momentum import MomentumEMA


@dataclass
class WorkerContext:
    cfg: Config
    stage: str
    rank: int
    world_size: int
    device: torch.device
    bf16: bool
    engine: Any
    task: Callable
    batches: Iterator
    val_batches: Callable[[], Any] | None  # None without in-run validation (train.val_every=0)
    total_steps: int
    flops_per_sample: float
    peak_flops: float
    momentum: MomentumEMA
    resume: ResumePoint | None = None
    data_position: Any = None  # raymmr.data.loader.LoaderPosition of ``batches``
    cross_domain_ids: tuple[int, ...] = ()  # the loader's domain ids outside training (shards.training_domains)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a worker starts from: ``source`` (its URL or path) and, when it was written
    by another number of workers under ZeRO, its universal conversion on this node."""

    source: str
    universal: Path | None = None


def find_resume_point(job: TrainJob, *, world_size: int, local_rank: int) -> ResumePoint | None:
    """Ray's latest checkpoint of this launch (a restart after a failure, possibly at another world
    size under elastic training) or else the ``--resume`` one. A ZeRO checkpoint of another world
    size is converted to DeepSpeed's universal format once per node (local rank 0; the others wait)."""
    import ray.train

    from raymmr import storage
    from raymmr.train import checkpoint as ckpt

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        # Read from the run's storage like any checkpoint: <run>/<this launch>/<checkpoint dir>.
        source = storage.join(job.run_dir, job.launch, Path(checkpoint.path).name)
    elif job.resume_from:
        source = job.resume_from
    else:
        return None
    meta = ckpt.read_meta(source)
    if not ckpt.needs_universal(meta, world_size):
        return ResumePoint(source)
    if local_rank == 0:
        console(f"[resume] {source}: written by {meta.world_size} workers with ZeRO-{meta.zero_stage}, resuming "
                f"with {world_size}: converting it with deepspeed.checkpoint.ds_to_universal")
    universal = ckpt.universal_copy(source, ckpt.local_copy(source) if local_rank == 0 else Path(),
                                    convert=local_rank == 0)
    if world_size > 1:
        dist.barrier()  # every node's conversion is done before any rank loads
    return ResumePoint(source, universal)


def mean_count_across_ranks(world_size: int):
    """``mean_count`` for the task: the mean over ranks of a local count (all_reduce / world),
    so a masked loss local_sum / mean_count averaged by data parallelism is sum / global_count."""
    if world_size == 1:
        return lambda count: count

    def mean_count(count: torch.Tensor) -> torch.Tensor:
        total = count.detach().float().clone()
        dist.all_reduce(total)
        return total / world_size

    return mean_count


def build_worker_context(job: TrainJob) -> WorkerContext:
    """Assemble what this rank's loop needs, from the small builders below (the benchmark uses
    the same ones): device, model, data, task, engine, batches, momentum encoders."""
    import ray.train

    from raymmr.data.shards import shard_urls
    from raymmr.objective.flops import training_flops_per_sample
    from raymmr.train.engine import build_engine, use_bf16
    from raymmr.train.metrics import measured_peak_flops

    cfg, stage, data = job.cfg, job.stage, job.data
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device, on_gpu = worker_device(cfg, rank)
    model, tokenizer, manifest = new_model(cfg, data)
    if job.init_from:
        from raymmr.rundir import RunDir
        from raymmr.train.initial_weights import load_initial_weights

        init = load_initial_weights(model, job.init_from, rank, manifest["answers"])
        if rank == 0:
            RunDir(job.run_dir).append_lines("events.jsonl", [json.dumps(init)])
    model.to(device)
    compile_model(model, cfg)
    loader_args = stage_loader_args(cfg, stage, tokenizer, manifest, rank=rank, world_size=world_size)
    train_urls = stage_urls(data, stage, manifest)
    partners = None
    if stage == "finetune":
        # Before the engine exists: under ZeRO-3 every forward is a collective, and ranks embed
        # different numbers of batches here.
        from raymmr.data.loader import make_loader
        from raymmr.train.partners import find_partners, similar_image_index

        key_to_row, index_embeddings = similar_image_index(
            model, make_loader, train_urls, loader_args, job, device, rank, world_size
        )
        partners = find_partners(key_to_row, index_embeddings, train_urls, cfg.finetune.similarity_threshold, rank)
    steps, lr = stage_schedule(cfg, stage)
    resume = find_resume_point(job, world_size=world_size, local_rank=ctx.get_local_rank())
    engine = build_engine(model, cfg.train, lr=lr, total_steps=steps, on_gpu=on_gpu,
                          load_universal=resume is not None and resume.universal is not None)
    if cfg.train.zero_stage == 3:
        register_external_parameters(model)
    position = data_position(resume, cfg, rank, world_size)
    return WorkerContext(
        cfg=cfg,
        stage=stage,
        rank=rank,
        world_size=world_size,
        device=device,
        bf16=use_bf16(cfg.train, on_gpu),
        engine=engine,
        task=stage_task(cfg, stage, mean_count_across_ranks(world_size)),
        batches=training_batches(cfg, stage, manifest, train_urls, loader_args, partners=partners,
                                 world_size=world_size, device=device, position=position),
        # No validation loader without in-run validation: its split may not exist (a pre-training corpus).
        val_batches=functools.partial(validation_batches, cfg, shard_urls(cfg.data.val_shards or data, "val"),
                                      loader_args, world_size=world_size) if cfg.train.val_every else None,
        total_steps=steps,
        flops_per_sample=training_flops_per_sample(model, stage, cfg.loss, cfg.masking, cfg.finetune),
        peak_flops=measured_peak_flops(device),
        momentum=MomentumEMA(model, zero3=cfg.train.zero_stage == 3),
        resume=resume,
        data_position=position,
        cross_domain_ids=cross_domain_ids(manifest),
        extra={"run_dir": job.run_dir},
    )


# --------------------------------------------------------------------------- builders


def cross_domain_ids(manifest: dict) -> tuple[int, ...]:
    """The ids the loader gives (positions in the manifest's ``domains``) of the domains a
    downstream model does not train on; none when the manifest records no training domains."""
    from raymmr.data.shards import training_domains

    trained = training_domains(manifest)
    return tuple(i for i, d in enumerate(manifest.get("domains", [])) if trained and d not in trained)


def trains_on_gpu(cfg: Config) -> bool:
    """Whether a rank trains on a GPU: the job asks for GPUs and this process sees one."""
    return torch.cuda.is_available() and cfg.train.gpus_per_worker > 0


def worker_device(cfg: Config, rank: int) -> tuple[torch.device, bool]:
    """This rank's device (its GPU when the job asks for GPUs and there is one) and whether it is
    a GPU; seeds torch per rank and, on CPU, keeps torch to the rank's CPU share."""
    on_gpu = trains_on_gpu(cfg)
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    torch.manual_seed(cfg.train.seed * 1000 + rank)
    if not on_gpu:
        # Ray gives each CPU worker its CPU share; torch would otherwise spawn a thread per core.
        torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    return device, on_gpu


def new_model(cfg: Config, data: str):
    """A newly initialised ``RaymmrModel`` sized for the shard set ``data``: its tokenizer's
    vocabulary and special ids, its manifest's answers. -> (model, tokenizer, manifest)."""
    from raymmr.data.shards import read_manifest
    from raymmr.data.tokenizer import load_tokenizer, tokenizer_source
    from raymmr.model.model import RaymmrModel

    manifest = read_manifest(data)
    tokenizer = load_tokenizer(tokenizer_source(cfg, data))
    model = RaymmrModel(
        cfg.model,
        vocab_size=len(tokenizer),
        num_answers=len(manifest["answers"]),
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.mask_token_id,
    )
    return model, tokenizer, manifest


def compile_model(model, cfg: Config):
    """``train.compile``: ``torch.compile`` each tower (the momentum copies too) and RecNet in place
    (``nn.Module.compile``: parameter names and the export stay as they are). Returns ``model``."""
    if cfg.train.compile:
        for module in (model.image_encoder, model.text_encoder, model.recnet, model.momentum_image_encoder,
                       model.momentum_text_encoder):
            module.compile()
    return model


def stage_schedule(cfg: Config, stage: str) -> tuple[int, float]:
    """(optimizer steps, peak learning rate) of a training stage."""
    return (cfg.train.steps, cfg.train.lr) if stage == "pretrain" else (cfg.finetune.steps, cfg.finetune.lr)


def stage_task(cfg: Config, stage: str, mean_count=None) -> Callable:
    """The stage's step, ``task(model, batch) -> terms``: ``pretrain_terms`` or ``finetune_terms``
    with this config and ``mean_count`` (``mean_count_across_ranks``; None on one process)."""
    from raymmr.objective.task import finetune_terms, pretrain_terms

    fn = pretrain_terms if stage == "pretrain" else finetune_terms
    return functools.partial(_step, cfg=cfg, mean_count=mean_count or mean_count_across_ranks(1), fn=fn)


def stage_urls(data: str, stage: str, manifest: dict) -> list[str]:
    """The shards of the split the stage trains on."""
    from raymmr.data.shards import shard_urls, training_split

    return shard_urls(data, training_split(stage, manifest))


def stage_loader_args(cfg: Config, stage: str, tokenizer, manifest: dict, *, rank: int, world_size: int) -> dict:
    """What every loader of this rank shares (``make_loader``'s arguments but the epoch's):
    tokenizer, answers, sizes, perturbation, the sample kinds the stage trains on, and pinned
    batches when the rank trains on a GPU (their copy to it then overlaps the step)."""
    return dict(
        tokenizer=tokenizer,
        answers=manifest["answers"],
        max_text_len=cfg.model.max_text_len,
        batch_size=cfg.train.batch_size,
        rank=rank,
        world_size=world_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        loader_workers=cfg.data.loader_workers,
        perturbation=cfg.perturbation,
        image_size=cfg.data.image_size,
        manifest=manifest,
        kinds=STAGE_KINDS[stage],
        blank_images=cfg.data.blank_images,
        pin_memory=trains_on_gpu(cfg),
    )


def training_batches(cfg: Config, stage: str, manifest: dict, urls: list[str], loader_args: dict, *, partners,
                     world_size: int, device, position) -> Iterator:
    """The training stream across epochs from ``position`` (``epochs``)."""
    from raymmr.data.loader import make_loader
    from raymmr.data.shards import training_split

    split = training_split(stage, manifest)
    samples_per_epoch = cfg.data.samples_per_epoch or epoch_samples(manifest["splits"][split], STAGE_KINDS[stage])
    return epochs(
        lambda epoch, start, phase: make_loader(
            urls,
            epoch_mode=cfg.data.epoch_mode,
            samples_per_epoch=samples_per_epoch,
            seed=stream_seed(cfg),
            epoch=epoch,
            start=start,
            phase=phase,
            partners=partners,
            **loader_args,
        ),
        exact=cfg.data.epoch_mode == "exact",
        world_size=world_size,
        device=device,
        position=position,
    )


def stream_seed(cfg: Config) -> int:
    """The training stream's seed (shard order, shuffle, text perturbations, partner draws): a run's
    seed, ``train.seed``, varies the data order and every draw, not only the initialisation, so the
    spread over seeds is the run-to-run spread (``data.seed`` fixes the data itself: SynthRad's
    images). ``train.seed=0`` keeps the stream of ``data.seed`` alone."""
    return cfg.data.seed + 1_000_003 * cfg.train.seed


def validation_batches(cfg: Config, urls: list[str], loader_args: dict, *, world_size: int):
    """The validation loader: resampled with a fixed seed and epoch, so the same samples at every
    validation and the same number of batches on every rank."""
    from raymmr.data.loader import make_loader

    n_val = cfg.train.val_batches * cfg.train.batch_size * world_size
    return make_loader(
        urls, epoch_mode="resampled", samples_per_epoch=n_val,
        seed=cfg.data.seed + 1, epoch=0, **{**loader_args, "shuffle_buffer": 0, "loader_workers": 0},
    )


def _step(model, batch, *, cfg, mean_count, fn):
    """One stage's task (``pretrain_terms`` or ``finetune_terms``) as the worker loop calls it."""
    return fn(model, batch, cfg, mean_count=mean_count)


def register_external_parameters(model) -> None:
    """ZeRO-3 gathers a module's own parameters when its forward runs; parameters the model reads
    from a child outside the child's forward (the ViT's class token and position table) are
    registered with the reading module, as the model lists them."""
    import deepspeed  # deepspeed.zero is an attribute, not an importable module

    for module, param in model.external_parameters():
        deepspeed.zero.register_external_parameter(module, param)


def epochs(make: Callable[[int, dict, int], Any], *, exact: bool, world_size: int, device, position) -> Iterator:
    """Batches across epochs, from ``position`` on (a ``LoaderPosition``, kept up to date with every
    batch handed out, so a checkpoint saves exactly where the stream stands). Resampled epochs have
    the same length on every rank. Exact epochs may not (shard splits differ), so each rank tells the
    others whether it still has a batch and all move to the next epoch together — no rank waits
    forever in a collective."""
    for epoch in itertools.count(position.epoch):
        if epoch != position.epoch:
            position.new_epoch(epoch)
        it = iter(make(epoch, position.roles, position.next_role))
        while True:
            batch = next(it, None)
            if exact and world_size > 1:
                has = torch.tensor([0.0 if batch is None else 1.0], device=device)
                dist.all_reduce(has, op=dist.ReduceOp.MIN)
                if has.item() == 0.0:
                    break
            if batch is None:
                break
            position.consumed(batch.pop("position"))
            yield batch


LOADER_STATE = "loader-rank-{rank}.json"  # in each checkpoint, one per rank


def data_position(resume: ResumePoint | None, cfg: Config, rank: int, world_size: int):
    """Where this rank's data stream starts: the position saved with the resume point when the world
    size and loader workers are the ones that wrote it (the exact sample sequence continues); else
    the start of the epoch after the saved one (a different partition cannot continue it)."""
    from raymmr import storage
    from raymmr.data.loader import LoaderPosition

    workers = max(1, cfg.data.loader_workers)
    if resume is None:
        return LoaderPosition(workers=workers)
    where = storage.join(resume.source, LOADER_STATE.format(rank=rank))
    if not storage.exists(where):
        if rank == 0:
            console(f"[resume] {resume.source} holds no data position (an older checkpoint): data starts at epoch 0")
        return LoaderPosition(workers=workers)
    saved = json.loads(storage.read_text(where))
    if saved["world_size"] == world_size and saved["workers"] == workers:
        return LoaderPosition.from_dict(saved)
    if rank == 0:
        console(f"[resume] the data position was saved by {saved['world_size']} ranks x {saved['workers']} loader "
                f"workers; with {world_size} x {workers} the data starts over at epoch {saved['epoch'] + 1}")
    return LoaderPosition(epoch=saved["epoch"] + 1, workers=workers)


def epoch_samples(split: dict, kinds: tuple[str, ...] | None) -> int:
    """A split's samples that a stage reads (its manifest entry's count, or of ``kinds`` only: a
    fine-tuning epoch is the VQA samples, not the captions it skips)."""
    if kinds is None or "kinds" not in split:
        return split["count"]
    return sum(split["kinds"].get(kind, 0) for kind in kinds)


# Sample kinds each stage reads: pre-training all (captions feed the contrastive terms), fine-tuning
# VQA only (CMDPI §3.3; a caption has no answer to train, its slot would be wasted).
STAGE_KINDS = {"pretrain": None, "finetune": ("vqa",)}
