"""Streaming loader: WebDataset shards -> batch dicts for the model task (contract in docs/SPEC.md §1).

Pipeline per consumer (one consumer = one DataLoader worker of one Ray Train rank)::

    shard list (this consumer's share) -> tar members -> samples grouped by key
      -> shuffle buffer (encoded bytes: ~10 KB per sample, not decoded pixels)
      -> batches: decode image + JSON, perturb texts, tokenise all texts in one call
         (fine-tuning: draw and decode each sample's similar image, ``Partners``)

Epoch modes
- ``exact``: the shard order is shuffled by (seed, epoch), identically on every rank; consumer
  c of C = world_size * workers reads shards c, c+C, ... so every sample is read exactly once
  per epoch across the job. Ranks may get different batch counts (the trainer agrees on when
  to stop); the last batch of a consumer may be short.
- ``resampled``: each consumer draws shards with replacement from its own RNG and the rank
  yields exactly samples_per_epoch // (batch_size * world_size) full batches, the same number
  on every rank, so no rank waits forever in a collective.

Shuffling and resumption: a reservoir of ``shuffle_buffer`` encoded samples, its RNG seeded by
(seed, epoch, consumer). A consumer's position is the number of samples it has drawn from that
stream and the batches it has yielded; each batch carries it (``position``). A restarted run
passes the positions it had consumed (``start``): each consumer replays its stream up to there
without decoding an image (reading the tars, not decoding them, is the cost) and continues: the
same samples in the same order, none replayed, none skipped. ``phase`` rotates the DataLoader
workers' roles so the round-robin interleaving of the workers' batches also continues where it was.

Kinds: ``kinds`` keeps only samples of those kinds (fine-tuning reads ``("vqa",)``: CMDPI
fine-tunes on VQA data, a caption in a fine-tuning batch would only take an image's place).
Filtering happens on the tar member's JSON, before the shuffle buffer and any image decode; a
sample whose JSON cannot be read is kept, so that decoding reports it.

Robustness: only jpg/jpeg/png/json/txt members are decoded (never pickle). A truncated or
corrupt tar, an undecodable image, malformed JSON or a missing text skips the sample, counts it
in the next batch's ``skipped`` and logs one warning per shard naming shard and member.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from raymmr.data.images import blank_image, image_array
from raymmr.data.schema import IMAGE_EXTS, Sample
from raymmr.data.shards import shard_counts
from raymmr.data.tario import Problems, read_tar

logger = logging.getLogger("raymmr.data.loader")

ANSWER_TYPE_IDS = {"open": 0, "closed": 1}
IGNORE_INDEX = -100
_SAMPLE_FIELDS = {f for f in Sample.__dataclass_fields__ if f != "image"}
_LABELS = ("answer", "answer_type", "question_type", "organ", "domain")


PARSED = "__record__"  # a raw sample's JSON record, once sample_kind has parsed it


def sample_kind(raw: dict, fields: dict | None = None) -> str | None:
    """The ``kind`` a raw sample declares ("caption" for a bare .txt or a foreign set's sample);
    None when unreadable."""
    if fields is not None:
        return "caption"
    if "json" not in raw:
        return "caption" if "txt" in raw else None
    try:
        record = json.loads(raw["json"])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    raw[PARSED] = record  # decode_record takes it from here: the JSON is parsed once
    return record.get("kind")


def _shuffled(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Reservoir shuffle: keep ``bufsize`` samples, emit a random one per new arrival."""
    buf: list[dict] = []
    for s in samples:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(bufsize)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


def _numbered(samples: Iterator[dict], skip: int, skipped=lambda: None) -> Iterator[dict]:
    """Each raw sample with the count of samples drawn so far (``__pos__``), the first ``skip``
    dropped: they were consumed before a restart (``skipped()`` is called once they are).
    Dropping happens before any image decode."""
    for n, raw in enumerate(samples, start=1):
        if n == skip:
            skipped()
        if n > skip:
            raw["__pos__"] = n
            yield raw


# --------------------------------------------------------------------------- decoding


def decode_record(raw: dict, fields: dict | None = None) -> dict:
    """The sample record from its JSON (or a bare .txt caption); for a shard set raymmr did not
    write, from the members the manifest's ``fields`` name (``raymmr.data.making.foreign``). Raises
    ValueError when unusable."""
    if fields is not None:
        from raymmr.data.tario import foreign_record

        return foreign_record(raw, fields)
    if PARSED in raw:
        record = dict(raw[PARSED])
    elif "json" in raw:
        try:
            record = json.loads(raw["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"malformed JSON ({e})") from None
        if not isinstance(record, dict):
            raise ValueError(f"JSON is a {type(record).__name__}, not an object")
    elif "txt" in raw:
        record = {"kind": "caption", "caption": raw["txt"].decode("utf-8", "replace").strip()}
    else:
        raise ValueError("no .json or .txt member (missing text)")
    kind = record.get("kind")
    if kind not in ("caption", "vqa"):
        raise ValueError(f"kind {kind!r} is neither 'caption' nor 'vqa'")
    text = record.get("caption" if kind == "caption" else "question")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"missing text (a {kind} sample needs a non-empty {'caption' if kind == 'caption' else 'question'})")
    for name in _LABELS:  # hand-made shards may hold numbers or nulls here; lookups need strings
        value = record.get(name)
        record[name] = value if isinstance(value, str) else "" if value is None or isinstance(value, (dict, list)) else str(value)
    record["key"] = raw["__key__"]
    return record


def _image_member(raw: dict) -> str | None:
    return next((e for e in IMAGE_EXTS if e in raw), None)


def decode_image(data: bytes, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Encoded image -> uint8 [3, size, size] (written into ``out`` when given).

    Shards store images at their final size, so this is a plain decode; a JPEG of another size
    is first decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (``draft``, far cheaper than a
    full decode), then ``images.fit_image`` brings it to size as everywhere else.
    """
    im = Image.open(io.BytesIO(data))
    if im.size != (size, size) and im.format == "JPEG":
        im.draft("L" if im.mode == "L" else "RGB", (size, size))
    return image_array(im, size, out)


def _new_images(batch: int, size: int, shared: bool) -> torch.Tensor:
    """uint8 [batch, 3, size, size], in shared memory inside a DataLoader worker.

    Decoding straight into shared memory means handing the batch to the main process passes a
    handle; a plain tensor would be copied into shared memory by the DataLoader's pickler
    (~70 µs per 224² image measured here).
    """
    shape = (batch, 3, size, size)
    if not shared:
        return torch.empty(shape, dtype=torch.uint8)
    try:
        storage = torch.UntypedStorage._new_shared(batch * 3 * size * size)  # what share_memory_() allocates
        return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)
    except (AttributeError, RuntimeError):  # private API: fall back to the public, copying one
        return torch.empty(shape, dtype=torch.uint8).share_memory_()


SAME_IMAGE_COS = 0.9999  # index cosine at or above which two images are the same picture: never a partner


@dataclass
class Partners:
    """Difference reconstruction's similar images (CMDPI §3.3: "we sample another similar image"),
    drawn afresh for every sample at every epoch, uniformly among the images whose cosine with the
    sample's image is in [threshold, SAME_IMAGE_COS), its own image excluded (``draw``).

    One row per distinct image, not per sample: several questions about one image share its row,
    so the candidates are images, not questions. A draw computes [B, M] cosines in the loader
    worker instead of holding an [M, M] candidate table (M ~ 10^4-10^5 images). A batch then
    carries ``partner_image`` uint8 [B,3,S,S], ``has_partner`` bool [B] (False: no candidate, the
    sample's own image stands in) and ``partner_similarity`` float32 [B] (the drawn partner's
    cosine; 0 without one)."""

    image_of: dict[str, int]  # sample key -> its image's row
    embeddings: torch.Tensor  # [M, D] fp32, unit rows: the pre-trained model's global image embeddings
    images: dict[int, bytes]  # row -> encoded image, for every image that is some image's candidate
    threshold: float

    def candidates(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosines of images ``rows`` [B] with every image, and which are their candidates.
        -> (sim [B, M] fp32, candidate [B, M] bool)"""
        sim = self.embeddings[rows] @ self.embeddings.t()
        candidate = (sim >= self.threshold) & (sim < SAME_IMAGE_COS)
        candidate[torch.arange(len(rows), device=rows.device), rows] = False  # never the own image
        return sim, candidate

    def draw(self, keys: list[str], seed_prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's partner row (-1: none) and its cosine (0: none), uniform among its
        candidates; seeded per sample by ``seed_prefix`` + key (the loader's (seed, epoch, key)), so
        a restarted run draws the same partners whatever the worker count.  -> ([B] int64, [B] fp32)"""
        rows = torch.tensor([self.image_of.get(k, -1) for k in keys], dtype=torch.long)
        partner = torch.full_like(rows, -1)
        if not len(self.embeddings):
            return partner, torch.zeros(len(keys))
        sim, candidate = self.candidates(rows.clamp_min(0))
        for i, key in enumerate(keys):  # per row: half the time of a cumsum over [B, M] at M = 10^5
            found = candidate[i].nonzero().squeeze(1) if rows[i] >= 0 else []  # ascending; none outside the index
            if len(found):
                partner[i] = found[int(random.Random(f"{seed_prefix}{key}/partner").random() * len(found))]
        has = partner >= 0
        return partner, torch.where(has, sim.gather(1, partner.clamp_min(0)[:, None]).squeeze(1), 0.0)


def read_images(urls: list[str], keys: set[str]) -> tuple[dict[str, int], list[bytes]]:
    """The encoded images of ``keys`` found in the shards, one entry per distinct image (samples
    that show the same image, e.g. several questions about it, share one entry: by the bytes'
    hash). Tar members only, nothing decoded.  -> (key -> entry, entries in reading order)"""
    problems = Problems()
    image_of: dict[str, int] = {}
    entry: dict[bytes, int] = {}
    images: list[bytes] = []
    for url in urls:
        for raw in read_tar(url, problems):
            ext = _image_member(raw)
            if raw["__key__"] in keys and ext is not None:
                digest = hashlib.blake2b(raw[ext], digest_size=16).digest()
                if digest not in entry:
                    entry[digest] = len(images)
                    images.append(raw[ext])
                image_of[raw["__key__"]] = entry[digest]
    return image_of, images


# --------------------------------------------------------------------------- the dataset


class ShardStream(torch.utils.data.IterableDataset):
    """Batches of one rank; in a DataLoader each worker process streams its own shards."""

    def __init__(self, urls, *, tokenizer, answers, max_text_len, batch_size, rank, world_size, epoch_mode,
                 samples_per_epoch, shuffle_buffer, seed, epoch, perturbation, image_size, manifest,
                 num_workers, start=None, phase=0, partners: Partners | None = None,
                 kinds: tuple[str, ...] | None = None, blank_images: bool = False):
        from raymmr.data.answers import normalize_answer

        self.urls, self.counts = list(urls), shard_counts(list(urls), manifest)
        self.tokenizer, self.max_text_len, self.batch_size = tokenizer, max_text_len, batch_size
        self.rank, self.world_size, self.epoch_mode = rank, world_size, epoch_mode
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, epoch
        self.perturbation, self.image_size = perturbation, image_size
        self.num_workers = max(1, num_workers)
        self.start = {int(k): tuple(v) for k, v in (start or {}).items()}  # role -> (drawn, batches)
        self.phase = phase
        self.partners = partners
        self.kinds = frozenset(kinds) if kinds else None
        self.blank_images = blank_images
        self.answer_ids = {a: i for i, a in enumerate(answers)}
        self._normalize = normalize_answer
        manifest = manifest or {}
        self.fields = manifest.get("fields")  # a foreign shard set: where each sample's text is
        self.index = {name: {v: i for i, v in enumerate(manifest.get(key, []))}
                      for name, key in [("question_type", "question_types"), ("organ", "organs"), ("domain", "domains")]}
        self.batches_per_rank = None
        if epoch_mode == "resampled":
            self.batches_per_rank = samples_per_epoch // (batch_size * world_size)

    # -- shards

    def _exact_shards(self, consumer: int, consumers: int) -> list[int]:
        order = list(range(len(self.urls)))
        random.Random(f"{self.seed}-{self.epoch}").shuffle(order)  # same permutation on every rank
        return order[consumer::consumers]

    def _resampled_shards(self, rng: random.Random) -> Iterator[int]:
        while True:
            yield rng.randrange(len(self.urls))

    def _samples(self, shard_ids, problems: Problems) -> Iterator[dict]:
        barren = 0  # consecutive shards without one sample: stop instead of spinning forever
        for i in shard_ids:
            n = 0
            for raw in read_tar(self.urls[i], problems, self.counts[i]):
                if self.kinds is not None and sample_kind(raw, self.fields) not in self.kinds | {None}:
                    continue
                n += 1
                yield raw
            barren = 0 if n else barren + 1
            if barren >= max(20, 2 * len(self.urls)):
                what = f"{'/'.join(sorted(self.kinds))} sample" if self.kinds else "sample"
                raise RuntimeError(f"{barren} shards in a row yielded no {what} (e.g. {self.urls[i]}); "
                                   "run `python jobs/make_shards.py validate DIR`")

    # -- iteration

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (wid + self.phase) % nw  # which consumer of this rank this worker plays
        consumer, consumers = self.rank * nw + role, self.world_size * nw
        offset, done = self.start.get(role, (0, 0))
        rng = random.Random(f"{self.seed}-{self.epoch}-{consumer}")
        problems = Problems()
        if self.epoch_mode == "exact":
            samples = self._samples(self._exact_shards(consumer, consumers), problems)
            quota = None
        else:
            samples = self._samples(self._resampled_shards(rng), problems)
            n = self.batches_per_rank
            quota = n // nw + (role < n % nw)
        if self.shuffle_buffer > 1:
            samples = _shuffled(samples, self.shuffle_buffer, rng)
        # The skipped prefix's problems were counted before the restart: not again.
        samples = _numbered(samples, skip=offset, skipped=problems.take)
        yield from self._batches(samples, problems, quota=quota, role=role, done=done)

    def _batches(self, samples: Iterator[dict], problems: Problems, quota: int | None, role: int = 0,
                 done: int = 0) -> Iterator[dict]:
        """Batches of ``samples``; ``done``: batches this role yielded before a restart."""
        if quota is not None and done >= quota:
            return
        pending = None
        shared = torch.utils.data.get_worker_info() is not None
        B, S = self.batch_size, self.image_size
        while True:
            images = _new_images(B, S, shared)
            pixels = images.numpy()
            records: list[dict] = []
            for raw in samples:
                try:
                    record = decode_record(raw, self.fields)
                    ext = _image_member(raw)
                    if ext is None:
                        raise ValueError("no image member (.jpg/.jpeg/.png/.webp)")
                    decode_image(raw[ext], S, pixels[len(records)])
                    if self.blank_images:  # decoded all the same: a bad image is skipped as in the real run
                        blank_image(S, pixels[len(records)])
                except Exception as e:  # noqa: BLE001 - PIL raises SyntaxError, struct.error, ... on bad bytes
                    problems.skip(raw["__url__"], f"{raw['__key__']} ({', '.join(k for k in raw if not k.startswith('__'))})",
                                  str(e))
                    continue
                records.append(record)
                if len(records) == B:
                    break
            if not records or (quota is not None and len(records) < B):
                break  # exhausted (resampled mode only ever yields full batches)
            batch = self._collate(records, images[: len(records)], problems.take())
            done += 1
            batch["position"] = torch.tensor([role, raw["__pos__"], done])  # after this batch
            if quota is not None:
                yield batch
                if done >= quota:
                    return
                continue
            # Exact mode holds one batch back: skips found after the last good sample (a
            # truncated final shard) are then still reported, in the last batch.
            if pending is not None:
                yield pending
            pending = batch
        if pending is not None:
            pending["skipped"] += problems.take()
            yield pending

    def _collate(self, records: list[dict], images: torch.Tensor, skipped: int) -> dict:
        from raymmr.data.tokenizer import encode_texts
        from raymmr.perturb import perturb_text

        p = self.perturbation
        keys = [r["key"] for r in records]
        texts = [r["caption"] if r["kind"] == "caption" else r["question"] for r in records]
        # Seeded per (seed, epoch, key): reproducible, independent of worker count and order.
        base = f"{self.seed}/{self.epoch}/"
        strong = [perturb_text(t, p.strong, p.text_ops, random.Random(base + k + "/strong")) for t, k in zip(texts, keys)]
        light = [perturb_text(t, p.light, p.text_ops, random.Random(base + k + "/light")) for t, k in zip(texts, keys)]
        ids, mask = encode_texts(self.tokenizer, texts + strong + light, self.max_text_len)  # one Rust call
        n = len(records)
        is_caption = [r["kind"] == "caption" for r in records]
        partners = self._partner_images(keys, images, base) if self.partners is not None else {}
        return {
            **partners,
            "image": images,
            "text_ids": ids[:n], "text_mask": mask[:n],
            "text_ids_strong": ids[n : 2 * n], "text_mask_strong": mask[n : 2 * n],
            "text_ids_light": ids[2 * n :], "text_mask_light": mask[2 * n :],
            "answer": torch.tensor([IGNORE_INDEX if c else self._answer_id(r.get("answer")) for r, c in zip(records, is_caption)]),
            "is_caption": torch.tensor(is_caption, dtype=torch.bool),
            "answer_type": torch.tensor([ANSWER_TYPE_IDS.get(r.get("answer_type"), -1) for r in records]),
            **{name: torch.tensor([table.get(r.get(name), -1) for r in records]) for name, table in self.index.items()},
            "skipped": torch.tensor(skipped, dtype=torch.int64),
            "key": keys,
        }

    def _partner_images(self, keys: list[str], images: torch.Tensor, seed_prefix: str) -> dict:
        """Each sample's partner, drawn for this epoch (``Partners.draw``), decoded beside it."""
        row, similarity = self.partners.draw(keys, seed_prefix)
        out = _new_images(len(keys), self.image_size, torch.utils.data.get_worker_info() is not None)
        pixels = out.numpy()
        has = row >= 0
        for i in range(len(keys)):
            try:
                if not has[i]:
                    raise ValueError
                decode_image(self.partners.images[int(row[i])], self.image_size, pixels[i])
            except Exception:  # noqa: BLE001 - no partner, or bytes PIL cannot read: the own image stands in
                out[i] = images[i]
                has[i] = False
        return {"partner_image": out, "has_partner": has, "partner_similarity": similarity.float().masked_fill(~has, 0.0)}

    def _answer_id(self, answer) -> int:
        if answer is None or answer == "":
            return IGNORE_INDEX
        i = self.answer_ids.get(answer)
        if i is None:  # records are normalised already; tolerate hand-made shards that are not
            i = self.answer_ids.get(self._normalize(answer), IGNORE_INDEX)
        return i


def make_loader(urls: list[str], *, tokenizer, answers: list[str], max_text_len: int, batch_size: int, rank: int,
                world_size: int, epoch_mode: str, samples_per_epoch: int, shuffle_buffer: int, loader_workers: int,
                seed: int, epoch: int, perturbation, image_size: int, manifest: dict | None = None, pin_memory: bool = False, start: dict | None = None,
                phase: int = 0, partners: Partners | None = None,
                kinds: tuple[str, ...] | None = None, blank_images: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader of batch dicts for rank ``rank`` of ``world_size`` (see the module docstring).

    Batch: image uint8 [B,3,S,S]; text_ids/text_mask (+ _strong, _light) int64 [B,L]; answer,
    answer_type, question_type, organ, domain int64 [B]; is_caption bool [B]; with
    ``partners``: partner_image uint8 [B,3,S,S], has_partner bool [B], partner_similarity float32 [B];
    skipped int64 []; key list[str]; position int64 [3] (worker role, samples drawn, batches: where
    the role stands after this batch). ``samples_per_epoch`` = 0 in resampled mode means the
    manifest's sample count of ``urls``. ``start`` (role -> the position of the last batch consumed)
    and ``phase`` (the role whose batch came next) continue an epoch where a checkpoint left it
    (see ``LoaderPosition``). ``kinds``: only samples of these kinds (None: all). ``blank_images``:
    every image is ``data.images.blank_image`` (the text-only baseline, ``data.blank_images``).
    """
    if not urls:
        raise ValueError("make_loader: no shard URL given (is the split empty?)")
    if epoch_mode not in ("exact", "resampled"):
        raise ValueError(f"make_loader: epoch_mode {epoch_mode!r}; choose 'exact' or 'resampled'")
    if not 0 <= rank < world_size:
        raise ValueError(f"make_loader: rank {rank} is not in [0, world_size={world_size})")
    if epoch_mode == "resampled":
        if samples_per_epoch <= 0:
            counts = shard_counts(list(urls), manifest)
            if None in counts:
                raise ValueError("make_loader: resampled mode needs samples_per_epoch > 0 when the manifest does not "
                                 "list every shard's count (set data.samples_per_epoch)")
            samples_per_epoch = sum(counts)
        if samples_per_epoch < batch_size * world_size:
            raise ValueError(f"make_loader: samples_per_epoch={samples_per_epoch} < batch_size*world_size="
                             f"{batch_size * world_size}: not one batch per rank")
    if loader_workers > 0:
        # The Rust tokenizer's thread pool does not survive fork; each worker is one core anyway.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    dataset = ShardStream(
        urls, tokenizer=tokenizer, answers=answers, max_text_len=max_text_len, batch_size=batch_size, rank=rank,
        world_size=world_size, epoch_mode=epoch_mode, samples_per_epoch=samples_per_epoch,
        shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch, perturbation=perturbation, image_size=image_size,
        manifest=manifest, num_workers=loader_workers, start=start, phase=phase,
        partners=partners, kinds=kinds, blank_images=blank_images,
    )
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=loader_workers, pin_memory=pin_memory,
        worker_init_fn=_worker_init if loader_workers > 0 else None,
        prefetch_factor=4 if loader_workers > 0 else None, persistent_workers=False,
        # Its own generator: an iterator would otherwise draw its workers' base seed from the global
        # torch RNG, so when a loader starts (a resume starts one at once) would shift the model's
        # random stream (masks, mixup draws), which a checkpoint restores exactly.
        generator=torch.Generator().manual_seed(seed * 1009 + epoch * 7919 + rank),
    )


class LoaderPosition:
    """Where one rank's training stream stands: the epoch, each worker role's position after its
    last consumed batch, and the role whose batch comes next. Saved with every checkpoint (one per
    rank) and given back to ``make_loader`` (``start``, ``phase``) to continue the exact sequence."""

    def __init__(self, epoch: int = 0, roles: dict | None = None, next_role: int = 0, workers: int = 1):
        self.epoch, self.workers = epoch, max(1, workers)
        self.roles = {int(k): list(v) for k, v in (roles or {}).items()}
        self.next_role = next_role

    def consumed(self, position: torch.Tensor) -> None:
        role, drawn, batches = (int(x) for x in position.tolist())  # a CPU tensor: no device sync
        self.roles[role] = [drawn, batches]
        self.next_role = (role + 1) % self.workers

    def new_epoch(self, epoch: int) -> None:
        self.epoch, self.roles, self.next_role = epoch, {}, 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "roles": self.roles, "next_role": self.next_role, "workers": self.workers}

    @classmethod
    def from_dict(cls, d: dict) -> LoaderPosition:
        return cls(d["epoch"], d["roles"], d["next_role"], d["workers"])


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes on one core; torch ops here are tiny


# --------------------------------------------------------------------------- evaluation readers


def iter_records(urls: list[str], fields: dict | None = None) -> Iterator[dict]:
    """JSON records of ``urls`` in order (no image decoding), skipping unusable ones with a warning.
    ``fields``: the shard set manifest's, for a set raymmr did not write (``shards.record_fields``)."""
    problems = Problems()
    for url in urls:
        for raw in read_tar(url, problems):
            try:
                yield decode_record(raw, fields)
            except ValueError as e:
                problems.skip(url, raw["__key__"], str(e))


def iter_samples(urls: list[str], fields: dict | None = None) -> Iterator[Sample]:
    """Decoded samples of ``urls`` in order (no shuffle, nothing dropped but unusable samples);
    ``sample.image`` is a loaded PIL image as stored (mode "L" or "RGB")."""
    problems = Problems()
    for url in urls:
        for raw in read_tar(url, problems):
            try:
                record = decode_record(raw, fields)
                ext = _image_member(raw)
                if ext is None:
                    raise ValueError("no image member (.jpg/.jpeg/.png/.webp)")
                image = Image.open(io.BytesIO(raw[ext]))
                image.load()
            except Exception as e:  # noqa: BLE001 - as in ShardStream: a bad sample must not end the evaluation
                problems.skip(url, raw["__key__"], str(e))
                continue
            values = {k: v for k, v in record.items() if k in _SAMPLE_FIELDS}
            yield Sample(image=image, **values)


__all__ = ["make_loader", "LoaderPosition", "iter_samples", "iter_records", "decode_image", "decode_record", "read_tar", "ShardStream"]
