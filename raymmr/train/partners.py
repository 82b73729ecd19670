"""Fine-tuning's similar-image index (docs/SPEC.md §4): global image embeddings of the train split
from the pre-trained model, built by every rank together and saved with the run, and the partners
each sample's difference reconstruction draws from it (``find_partners``)."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from raymmr.train.metrics import console

INDEX = "similar_index.safetensors"  # in the run directory


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
