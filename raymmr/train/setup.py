"""Everything a worker builds before its loop: config, device, data, model, engine, task.

Kept apart from ``worker.py`` so the loop reads as a loop. Nothing here starts collectives
except the similar-image index (fine-tuning), which every rank builds together.
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


def worker_device(cfg: Config, rank: int) -> tuple[torch.device, bool]:
    """This rank's device (its GPU when the job asks for GPUs and there is one) and whether it is
    a GPU; seeds torch per rank and, on CPU, keeps torch to the rank's CPU share."""
    on_gpu = torch.cuda.is_available() and cfg.train.gpus_per_worker > 0
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
    tokenizer, answers, sizes, perturbation, and the sample kinds the stage trains on."""
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


def load_initial_weights(model, init_from: str, rank: int, answers: list[str]) -> dict:
    """Initialise fine-tuning from a pre-training export (a path or URL the driver resolved with
    ``storage.find_export``; each node copies a remote one into its own cache). The answer head's
    rows follow the answers, not their positions: a row is carried over for every answer of this
    run's vocabulary that the export's ``answers.json`` has, and the other rows keep their fresh
    initialisation. Returns what was carried (logged by rank 0 and recorded in events.jsonl)."""
    from safetensors.torch import load_file

    from raymmr import storage

    export = storage.cached_copy(init_from, "exports")
    weights = export / storage.WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(f"--init {init_from}: no {storage.WEIGHTS} there")
    state = load_file(str(weights))
    own = model.state_dict()
    head = f"recnet.head_answer.{len(model.recnet.head_answer) - 1}"
    vocab = export / "answers.json"
    old_answers = json.loads(vocab.read_text()) if vocab.exists() else None
    report = {"event": "init", "export": init_from, "answers": len(answers)}
    if old_answers is not None and f"{head}.weight" in state:
        rows = {a: i for i, a in enumerate(old_answers)}
        carried = [(i, rows[a]) for i, a in enumerate(answers) if a in rows]
        for name in (f"{head}.weight", f"{head}.bias"):
            new = own[name].clone()
            if carried:
                new[torch.tensor([i for i, _ in carried])] = state[name][torch.tensor([j for _, j in carried])]
            state[name] = new
        report.update(answers_carried=len(carried), answers_new=[a for a in answers if a not in rows][:20],
                      answers_dropped=len(old_answers) - len(carried))
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        state.pop(k)
    missing, unexpected = model.load_state_dict(state, strict=False)
    report.update(reinitialised=mismatched, missing=missing, unexpected=unexpected)
    if rank == 0:
        head_note = (f"answer head: {report['answers_carried']} of {len(answers)} answers carried over"
                     + (f", new: {report['answers_new']}" if report["answers_new"] else "")
                     if "answers_carried" in report else "answer head: the export has no answers.json")
        console(f"[init] from {init_from}: {head_note}"
                + (f"; re-initialised {mismatched}" if mismatched else "")
                + (f"; missing {missing}" if missing else "") + (f"; unexpected {unexpected}" if unexpected else ""))
    return report


def find_partners(key_to_row: dict[str, int], embeddings: torch.Tensor, train_urls: list[str], threshold: float,
                  rank: int, block: int = 1024):
    """What the loader draws each sample's difference-reconstruction partner from (``Partners``):
    the similar-image index with one row per distinct image (the samples' images read from the
    shards and deduplicated by their bytes; each image's embedding is its first sample's row) and
    the encoded bytes of every image that is some image's candidate (candidacy is symmetric: those
    with a candidate of their own). The same on every rank (the index is), and again after a
    restart. Rank 0 reports the split-wide coverage, the mean number of candidates per image and
    the memory the partners take in every loader worker."""
    import torch.nn.functional as F

    from raymmr.data.loader import SAME_IMAGE_COS, Partners, read_images

    image_of, encoded = read_images(train_urls, set(key_to_row))
    first: dict[int, int] = {}  # image -> its first sample's index row
    for key, image in image_of.items():
        first.setdefault(image, key_to_row[key])
    rows = torch.tensor([first[i] for i in range(len(encoded))], dtype=torch.long, device=embeddings.device)
    unit = F.normalize(embeddings[rows].float(), dim=-1)  # [M, D]
    index = Partners(image_of=image_of, embeddings=unit, images={}, threshold=threshold)
    blocks = torch.arange(len(rows), device=rows.device).split(block)  # [block, M] at a time: M may be large
    counts = torch.cat([index.candidates(b)[1].sum(dim=1) for b in blocks]).cpu() if blocks else torch.zeros(0)  # [M]
    partners = Partners(image_of=image_of, embeddings=unit.cpu(), threshold=threshold,
                        images={i: encoded[i] for i in (counts > 0).nonzero().flatten().tolist()})
    if rank == 0:
        covered = sum(int(counts[image_of[k]] > 0) for k in key_to_row if k in image_of)
        mean_candidates = counts.float().mean().item() if len(counts) else 0.0
        mib = sum(map(len, partners.images.values())) / 2**20
        console(f"[finetune] difference reconstruction: {covered} of {len(key_to_row)} training samples "
                f"({covered / max(1, len(key_to_row)):.1%}) have a similar image (cosine in [{threshold}, "
                f"{SAME_IMAGE_COS})); {len(encoded)} distinct images, {mean_candidates:.1f} candidates per image "
                f"on average; in each loader worker: {len(partners.images)} partner images ({mib:.1f} MiB encoded) "
                f"+ embeddings {list(unit.shape)} fp32 ({unit.numel() * 4 / 2**20:.1f} MiB)")
    return partners


@torch.no_grad()
def similar_image_index(model, make_loader, urls, loader_args, job, device, rank, world_size):
    """Global image embeddings of the train split from the pre-trained model (docs/SPEC.md §4), built by
    all ranks together (each embeds its exact-epoch share, then all-gather: every rank gets the
    whole table through the process group) and saved with the run as ``similar_index.safetensors``;
    a restarted run reads it back from the run URL. Returns (key -> row, embeddings [N, D] on device)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from raymmr import storage
    from raymmr.rundir import RunDir

    run = RunDir(job.run_dir)
    built_from = index_fingerprint(job, urls, loader_args)
    # Rank 0 decides for all: ranks that disagreed on building would wait in different collectives.
    decision = [saved_index(run, built_from) if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(decision, src=0)
    if decision[0]:
        path = storage.cached_copy(run.url_of(INDEX), "indexes")
        with safe_open(str(path), "pt") as f:
            all_keys = json.loads(f.metadata()["keys"])
        table = load_file(str(path))["embeddings"]
        return {k: i for i, k in enumerate(all_keys)}, table.to(device)
    was_training = model.training
    model.eval()
    keys, embs = [], []
    loader = make_loader(urls, epoch_mode="exact", samples_per_epoch=0, seed=0, epoch=0,
                         **{**loader_args, "shuffle_buffer": 0})
    from tqdm.auto import tqdm

    # Rank 0's share, one line every ~10 s in the worker log (its stderr is not a terminal).
    for batch in tqdm(loader, desc="similar-image index (rank 0's share)", unit="batch", disable=rank != 0,
                      mininterval=10, leave=False):
        embs.append(model.encode_image(batch["image"].to(device)).float().cpu())
        keys += list(batch["key"])
    model.train(was_training)
    local = torch.cat(embs) if embs else torch.zeros(0, model.embed_dim)
    gathered_keys, gathered = [None] * world_size, [None] * world_size
    if world_size > 1:
        # Our own workers' key strings and embeddings (not data from outside the run).
        dist.all_gather_object(gathered_keys, keys)
        dist.all_gather_object(gathered, local)
    else:
        gathered_keys, gathered = [keys], [local]
    all_keys = [k for ks in gathered_keys for k in ks]
    table = torch.cat(gathered)
    if rank == 0:
        tmp = run.local / f".{INDEX}.tmp"
        save_file({"embeddings": table.contiguous()}, str(tmp),
                  metadata={"keys": json.dumps(all_keys), "built_from": built_from})
        tmp.rename(run.local / INDEX)  # atomic: a half-written index is never loaded
        run.upload(INDEX)
    return {k: i for i, k in enumerate(all_keys)}, table.to(device)


def index_fingerprint(job, urls: list[str], loader_args: dict) -> str:
    """What a similar-image index is built from: the pre-trained weights it embeds with (their
    storage fingerprint), the training shards and how their images are read."""
    import hashlib

    from raymmr import storage

    weights = storage.join(job.init_from, storage.WEIGHTS) if job.init_from else ""
    parts = {"weights": storage.fingerprint(weights) if weights and storage.exists(weights) else weights,
             "urls": list(urls), "image_size": loader_args.get("image_size"),
             "blank_images": loader_args.get("blank_images")}
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def saved_index(run, built_from: str) -> bool:
    """Whether the run holds a similar-image index built from ``built_from`` (one built from other
    weights or shards, or by an older raymmr that did not record it, is rebuilt, with a note)."""
    from safetensors import safe_open

    from raymmr import storage

    if not run.exists(INDEX):
        return False
    with safe_open(str(storage.cached_copy(run.url_of(INDEX), "indexes")), "pt") as f:
        recorded = (f.metadata() or {}).get("built_from")
    if recorded != built_from:
        console(f"[finetune] the similar-image index in {run} was built from other weights or shards; rebuilding it")
        return False
    return True


def epoch_samples(split: dict, kinds: tuple[str, ...] | None) -> int:
    """A split's samples that a stage reads (its manifest entry's count, or of ``kinds`` only: a
    fine-tuning epoch is the VQA samples, not the captions it skips)."""
    if kinds is None or "kinds" not in split:
        return split["count"]
    return sum(split["kinds"].get(kind, 0) for kind in kinds)


INDEX = "similar_index.safetensors"
# Sample kinds each stage reads: pre-training all (captions feed the contrastive terms), fine-tuning
# VQA only (CMDPI §3.3; a caption has no answer to train, its slot would be wasted).
STAGE_KINDS = {"pretrain": None, "finetune": ("vqa",)}
