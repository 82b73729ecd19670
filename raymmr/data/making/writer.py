"""Writing a shard set (its layout: ``raymmr.data.shards``): samples -> tar shards per split,
checksummed as they are written, then the tokenizer and, last, the manifest."""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from PIL import Image

from raymmr.data.images import IMAGE_FORMATS, encode_image
from raymmr.data.schema import SCHEMA_VERSION, Sample
from raymmr.data.shards import FORMAT, MANIFEST, PRETRAIN_SPLIT, SHARD_NAME, TRAIN_SPLIT, ShardError

logger = logging.getLogger("raymmr.data.making.writer")

KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")  # webdataset splits member names at the first dot


class _HashingFile:
    """A write-only file that hashes what passes through, so checksums need no second read."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def close(self) -> None:
        self._f.close()


class _SplitWriter:
    """Rolls ``{split}-%06d.tar`` shards of ``samples_per_shard`` samples each."""

    def __init__(self, out: Path, split: str, samples_per_shard: int):
        self.out, self.split, self.per_shard = out, split, samples_per_shard
        self.shards: list[dict] = []
        self._tar = self._file = None
        self._count = 0

    def write(self, key: str, ext: str, image: bytes, record: bytes) -> None:
        import webdataset as wds

        if self._tar is None or self._count == self.per_shard:
            self._close_shard()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self._file = _HashingFile(self.out / name)
            # fixed mtime and owner: the same samples give byte-identical tars (stable checksums)
            self._tar = wds.TarWriter(self._file, encoder=False, mtime=0, user="raymmr", group="raymmr",
                                      format="PAX_FORMAT")
            self.shards.append({"name": name})
        self._tar.write({"__key__": key, ext: image, "json": record})
        self._count += 1

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            self.shards[-1].update(count=self._count, sha256=self._file.sha256.hexdigest(), bytes=self._file.bytes)
        self._tar, self._file, self._count = None, None, 0

    def close(self) -> list[dict]:
        self._close_shard()
        return self.shards


def _remove_stale(out: Path) -> None:
    """Delete the shards of a previous, possibly larger, set so no orphan survives a rewrite."""
    (out / MANIFEST).unlink(missing_ok=True)
    for path in out.glob("*.tar"):
        if SHARD_NAME.match(path.name):
            path.unlink()


def write_shards(
    samples_by_split: Mapping[str, Iterable[Sample]] | Iterable[Sample],
    out_dir: str | os.PathLike,
    *,
    image_size: int,
    samples_per_shard: int,
    image_format: str = "jpg",
    jpeg_quality: int = 90,
    vocab_splits: Iterable[str] = ("train",),
    tokenizer_vocab_size: int | None = 8192,
    source: str = "",
    config: dict | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict:
    """Write samples as WebDataset shards plus tokenizer.json and manifest.json; return the manifest.

    ``samples_by_split``: {split: samples}, or one stream routed by each ``sample.split``.
    Images are encoded once per distinct object (VQA datasets repeat an image per question).
    ``vocab_splits``: splits whose answers form the answer vocabulary (("train",) for the
    clean protocol; every split for the paper-compatible one). ``tokenizer_vocab_size=None``
    skips tokenizer training. A sample whose image cannot be decoded is skipped and counted.
    """
    from tqdm.auto import tqdm

    from raymmr.data.answers import build_answer_vocab

    if image_format not in IMAGE_FORMATS:
        raise ShardError(f"image_format {image_format!r}: choose one of {sorted(IMAGE_FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(samples_by_split, Mapping):
        stream: Iterable = ((split, s) for split, samples in samples_by_split.items() for s in samples)
    else:
        stream = ((s.split, s) for s in samples_by_split)
    # Pull the first sample before deleting the old set: a source that fails at once (wrong
    # folder) must not destroy a good shard set already in out_dir.
    stream = iter(stream)
    first = next(stream, None)
    stream = itertools.chain([first] if first is not None else [], stream)
    _remove_stale(out)
    writers: dict[str, _SplitWriter] = {}
    stats: dict[str, dict[str, Counter]] = {}
    answers: dict[str, list[str]] = {}
    texts: list[str] = []
    seen_keys: set[str] = set()
    cache: dict[int, tuple[object, bytes]] = {}  # id(image) -> (image, bytes): one encode per image
    for split, sample in tqdm(stream, total=total, unit="sample", desc=f"shards -> {out}", disable=not progress):
        if not KEY_OK.match(sample.key or ""):
            raise ShardError(f"sample key {sample.key!r}: keys may only hold letters, digits, '_' and '-' "
                             "(webdataset splits member names at the first '.')")
        if sample.key in seen_keys:
            raise ShardError(f"sample key {sample.key!r} occurs twice; keys must be unique in a shard set")
        seen_keys.add(sample.key)
        st = stats.setdefault(split, {k: Counter() for k in ("kinds", "domains", "answer_types", "skipped",
                                                               "question_types", "organs", "modalities")})
        hit = cache.get(id(sample.image))
        if hit is not None and hit[0] is sample.image:
            image = hit[1]
        else:
            try:
                image = encode_image(sample.image, image_size, image_format, jpeg_quality)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                st["skipped"]["bad image"] += 1
                logger.warning("skipping sample %s (%s): its image cannot be decoded: %s", sample.key, split, e)
                continue
            if len(cache) > 256:
                cache.clear()
            cache[id(sample.image)] = (sample.image, image)
        sample.split = split
        record = json.dumps(sample.record(), ensure_ascii=False, sort_keys=True).encode("utf-8")
        if split not in writers:
            writers[split] = _SplitWriter(out, split, samples_per_shard)
        writers[split].write(sample.key, image_format, image, record)
        st["kinds"][sample.kind] += 1
        for field, name in [("domain", "domains"), ("answer_type", "answer_types"), ("question_type", "question_types"),
                            ("organ", "organs"), ("modality", "modalities")]:
            if getattr(sample, field):
                st[name][getattr(sample, field)] += 1
        if sample.kind == "vqa" and sample.answer:
            answers.setdefault(split, []).append(sample.answer)
        if split in (TRAIN_SPLIT, PRETRAIN_SPLIT) and sample.text:
            texts.append(sample.text)
    if not writers:
        raise ShardError(f"write_shards: no sample to write into {out} (did the source yield nothing?)")
    splits = {}
    for split, writer in writers.items():
        st = stats[split]
        splits[split] = {
            "count": sum(st["kinds"].values()), "shards": writer.close(), "domains": sorted(st["domains"]),
            "kinds": dict(st["kinds"]), "answer_types": dict(st["answer_types"]), "skipped": sum(st["skipped"].values()),
        }
    vocab_splits = [s for s in vocab_splits if s in splits] if "all" not in vocab_splits else list(splits)
    union = lambda name: sorted({v for st in stats.values() for v in st[name]})  # noqa: E731
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "source": source,
        "image_size": image_size, "image_format": image_format, "samples_per_shard": samples_per_shard,
        "splits": splits,
        "answers": build_answer_vocab(a for s in vocab_splits for a in answers.get(s, [])),
        "vocab_splits": vocab_splits,
        "question_types": union("question_types"), "organs": union("organs"), "domains": union("domains"),
        "modalities": union("modalities"), "tokenizer": None, "config": config or {},
    }
    if tokenizer_vocab_size and texts:
        from raymmr.data.tokenizer import TOKENIZER_FILE, train_tokenizer

        train_tokenizer(texts, out, vocab_size=tokenizer_vocab_size)
        manifest["tokenizer"] = TOKENIZER_FILE
    _write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
