"""Making shard sets: SynthRad's, a public dataset's (converted), and the one a job trains on
(``resolve_data``: ``--data``, else ``data.train_shards``, else SynthRad generated once)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

from raymmr.config import Config, ConfigError, check_synthrad_domains
from raymmr.data.images import encode_image
from raymmr.data.making.writer import write_shards
from raymmr.data.schema import Sample
from raymmr.data.shards import MANIFEST, ShardError, read_manifest, shard_urls


@contextlib.contextmanager
def _locked(out: Path):
    """An exclusive lock on ``out``: Ray workers starting together generate the set only once."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".raymmr-shards.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _intact(out: Path, manifest: dict) -> bool:
    """Cheap completeness check (files and sizes, not checksums: validate_shards does those)."""
    for split in manifest["splits"].values():
        for s in split["shards"]:
            p = out / s["name"]
            if not p.is_file() or p.stat().st_size != s["bytes"]:
                return False
    return not manifest.get("tokenizer") or (out / manifest["tokenizer"]).is_file()


def synthrad_config(data_cfg, image_format: str = "jpg") -> dict:
    """Everything the SynthRad shard bytes depend on; a set is reused only when this matches."""
    from raymmr.data.making import synthrad
    from raymmr.data.tokenizer import TOKENIZER_VERSION

    return {"generator": "synthrad", "generator_version": synthrad.GENERATOR_VERSION,
            "tokenizer_version": TOKENIZER_VERSION, "seed": data_cfg.seed,
            "image_size": data_cfg.image_size, "image_format": image_format,
            "samples_per_shard": data_cfg.samples_per_shard, "domains": data_cfg.synthrad_domains,
            "test_domain": data_cfg.synthrad_test_domain, "val_domain": data_cfg.synthrad_val_domain, **{f"images_{k}": v for k, v in synthrad.split_sizes(data_cfg).items()}}


def _synthrad_block(args) -> list[Sample]:
    """Samples of images [start, stop) of a split, images encoded once and shared (picklable)."""
    split, start, stop, kw, image_format = args
    from raymmr.data.making import synthrad

    styles = synthrad.domain_styles(kw["num_domains"])
    out = []
    for i in range(start, stop):
        samples = synthrad.generate_image_samples(split, i, styles=styles, **kw)
        image = encode_image(samples[0].image, kw["image_size"], image_format)
        for s in samples:
            s.image = image
        out += samples
    return out


def _synthrad_stream(split: str, n_images: int, kw: dict, image_format: str, workers: int, bar) -> Iterator[Sample]:
    """Blocks of 256 images, generated in ``workers`` processes, shuffled within each block so a
    shard mixes images instead of holding one image's 4-5 samples back to back."""
    import multiprocessing as mp

    block = 256
    jobs = [(split, a, min(a + block, n_images), kw, image_format) for a in range(0, n_images, block)]
    pool = mp.get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        for j, samples in enumerate(pool.imap(_synthrad_block, jobs) if pool else map(_synthrad_block, jobs)):
            random.Random(f"{kw['seed']}-{split}-{j}").shuffle(samples)
            bar.update(jobs[j][2] - jobs[j][1])
            yield from samples
    finally:
        if pool is not None:
            pool.terminate()


def make_synthrad_shards(out_dir: str | os.PathLike, data_cfg, *, progress: bool = True, workers: int | None = None) -> dict:
    """SynthRad shards + tokenizer for ``data_cfg`` (a DataConfig) in ``out_dir``; returns the manifest.

    Idempotent and safe to call from many processes at once: an existing complete set made
    from the same settings is reused in milliseconds; anything else is regenerated.
    ``workers``: generator processes (default: up to 4 for large sets, none for small ones).
    """
    from tqdm.auto import tqdm

    from raymmr.data.making import synthrad

    out = Path(out_dir)
    config = synthrad_config(data_cfg)
    with _locked(out):
        if (out / MANIFEST).is_file():
            with contextlib.suppress(ShardError):
                manifest = read_manifest(out)
                if manifest.get("config") == config and _intact(out, manifest):
                    return manifest
        sizes = synthrad.split_sizes(data_cfg)
        if workers is None:
            pixels = sum(sizes.values()) * data_cfg.image_size**2
            workers = 0 if pixels < 50e6 else min(4, os.cpu_count() or 1)
        kw = dict(image_size=data_cfg.image_size, num_domains=data_cfg.synthrad_domains,
                  test_domain=data_cfg.synthrad_test_domain, val_domain=data_cfg.synthrad_val_domain, seed=data_cfg.seed)
        try:
            check_synthrad_domains(kw["num_domains"], kw["test_domain"], kw["val_domain"])
        except ConfigError as e:
            raise ShardError(str(e)) from None
        with tqdm(total=sum(sizes.values()), unit="image", desc=f"SynthRad -> {out}", disable=not progress) as bar:
            streams = {split: _synthrad_stream(split, n, kw, "jpg", workers, bar) for split, n in sizes.items()}
            return write_shards(streams, out, image_size=data_cfg.image_size, samples_per_shard=data_cfg.samples_per_shard,
                                source="synthrad", config=config, progress=False)


SOURCES_WITHOUT_VAL = ("vqa-rad", "pmc-vqa")


def make_converted_shards(
    name: str, src: str | os.PathLike, out_dir: str | os.PathLike, data_cfg, *, vocab: str = "train",
    val_fraction: float | None = None, progress: bool = True,
) -> dict:
    """Convert a public dataset (``raymmr.data.making.converters``) to a shard set; returns the manifest.

    ``vocab``: "train" (clean protocol) or "all" (paper-compatible: answers of every split).
    ``val_fraction``: share of train images moved to a val split, grouped by image so that no
    image is in both (default 0.1 for sources without a validation split, else 0).
    """
    from raymmr.data.making.converters import convert

    if vocab not in ("train", "all"):
        raise ShardError(f"vocab {vocab!r}: choose 'train' (clean protocol) or 'all' (paper-compatible)")
    if val_fraction is None:
        val_fraction = 0.1 if name in SOURCES_WITHOUT_VAL else 0.0
    samples = convert(name, src)
    if val_fraction > 0:
        samples = _carve_val(samples, val_fraction, data_cfg.seed)
    with _locked(Path(out_dir)):
        return write_shards(samples, out_dir, image_size=data_cfg.image_size, samples_per_shard=data_cfg.samples_per_shard,
                            vocab_splits=("all",) if vocab == "all" else ("train",), source=name,
                            config={"source": name, "src": str(src), "vocab": vocab, "val_fraction": val_fraction},
                            progress=progress)


def _carve_val(samples: Iterable[Sample], fraction: float, seed: int) -> Iterator[Sample]:
    """Move train samples to "val" by a hash of their image bytes: all questions on one image go together."""
    threshold = int(fraction * 2**32)
    for s in samples:
        if s.split == "train":
            raw = s.image if isinstance(s.image, (bytes, bytearray)) else str(s.extra.get("image_id", s.key)).encode()
            h = hashlib.sha1(str(seed).encode() + bytes(raw)).digest()
            if int.from_bytes(h[:4], "big") < threshold:
                s.split = "val"
        yield s


def resolve_data(cfg: Config, data: str | None) -> str:
    """The shard set to train on: ``--data``, else ``data.train_shards``, else SynthRad shards
    generated once for this data config (reused by later runs)."""
    from raymmr import storage
    from raymmr.errors import JobError

    data = data or cfg.data.train_shards
    if not data:
        data = str(storage.cache_path("synthrad", json.dumps(cfg.to_dict()["data"], sort_keys=True)))
        make_synthrad_shards(data, cfg.data)
    try:
        shard_urls(data, "train")
    except (ValueError, FileNotFoundError) as e:
        raise JobError(f"--data {data}: {e}") from None
    return data
