"""WebDataset shard sets: writing, the manifest, finding and opening shard URLs (SPEC §1).

Layout of a shard set directory::

    OUT/train-000000.tar ...   standard tar: {key}.jpg|png (image, image_size²) + {key}.json (Sample.record())
    OUT/val-000000.tar ...
    OUT/test-000000.tar ...
    OUT/tokenizer.json         WordPiece trained on the train texts (raymmr.data.tokenizer)
    OUT/manifest.json          written last: its presence means the set is complete

``manifest.json``::

    {"format": "raymmr-webdataset", "schema_version": 1, "created": ISO time, "source": "synthrad",
     "image_size": 64, "image_format": "jpg", "samples_per_shard": 500,
     "splits": {"train": {"count": N, "shards": [{"name": "train-000000.tar", "count": n,
                                                  "sha256": hex, "bytes": size}, ...],
                          "domains": [...], "kinds": {"caption": n, "vqa": n},
                          "answer_types": {"open": n, "closed": n}, "skipped": n}, ...},
     "answers": [...], "vocab_splits": ["train"],   # answer vocabulary (build_answer_vocab)
     "question_types": [...], "organs": [...], "domains": [...], "modalities": [...],
     "tokenizer": "tokenizer.json", "config": {...}}  # config: what generated the set

Images are resized to exactly ``image_size``² (aspect not kept, as M3AE does and as the
exported predictor does at inference), so the loader never resizes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from raymmr.data.images import fit_image
from raymmr.data.schema import SCHEMA_VERSION, Sample

logger = logging.getLogger("raymmr.data.shards")

MANIFEST = "manifest.json"
FORMAT = "raymmr-webdataset"
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")  # webdataset splits member names at the first dot
_REMOTE = ("s3", "gs", "http", "https")
_PIL_FORMAT = {"jpg": "JPEG", "png": "PNG"}


class ShardError(ValueError):
    """A shard set, pattern or sample that cannot be used; the message names it and the fix."""


# --------------------------------------------------------------------------- images


def encode_image(image, image_size: int, image_format: str = "jpg", quality: int = 90) -> bytes:
    """``image`` (PIL image, encoded bytes, a file path or a uint8 array) -> bytes at image_size².

    Grey images stay single-channel (a third of the bytes and decode time), everything else
    becomes RGB. Already-encoded images of the right size and format pass through untouched.
    """
    target = _PIL_FORMAT[image_format]
    if isinstance(image, (str, os.PathLike)):
        image = Path(image).read_bytes()
    if isinstance(image, (bytes, bytearray, memoryview)):
        raw = bytes(image)
        im = Image.open(io.BytesIO(raw))
        if im.size == (image_size, image_size) and im.format == target and im.mode in ("L", "RGB"):
            return raw
        if im.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale in the DCT domain when large
            im.draft("L" if im.mode == "L" else "RGB", (image_size, image_size))
    elif isinstance(image, np.ndarray):
        im = Image.fromarray(image)
    elif isinstance(image, Image.Image):
        im = image
    else:
        raise ShardError(f"image of type {type(image).__name__}: expected a PIL image, encoded bytes, a path or an array")
    im = fit_image(im, image_size)
    buf = io.BytesIO()
    if target == "JPEG":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# --------------------------------------------------------------------------- writing


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

    if image_format not in _PIL_FORMAT:
        raise ShardError(f"image_format {image_format!r}: choose one of {sorted(_PIL_FORMAT)}")
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
        if not _KEY_OK.match(sample.key or ""):
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


# --------------------------------------------------------------------------- opening and finding


def _scheme(url: str) -> str:
    return urlparse(url).scheme if "://" in url else ("pipe" if url.startswith("pipe:") else "")


def open_url(url: str):
    """A readable binary stream for a local path, file://, pipe:CMD, s3://, gs:// or http(s):// URL.

    s3:// and gs:// use fsspec when s3fs / gcsfs are installed, otherwise the ``aws`` / ``gsutil``
    command line through webdataset's ``pipe:`` (nothing extra to install on cluster images).
    """
    import webdataset as wds

    scheme = _scheme(url)
    if scheme in ("", "file"):
        return open(url[7:] if scheme == "file" else url, "rb")  # noqa: SIM115 - the caller closes it
    if scheme in ("s3", "gs"):
        with contextlib.suppress(ImportError, ValueError):
            import fsspec

            fsspec.get_filesystem_class(scheme)  # ImportError without s3fs / gcsfs
            return fsspec.open(url, "rb").open()
        if scheme == "s3":
            return wds.gopen(f"pipe:aws s3 cp {shlex.quote(url)} -")
    return wds.gopen(url)  # pipe:, http(s) (curl), gs (gsutil cat)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if _scheme(base) else str(Path(base) / name)


def _manifest_location(data: str) -> str:
    base = data.split("{")[0] if ("{" in data or "*" in data) else data
    if base.endswith(".json"):
        return base
    if base.endswith(".tar") or "{" in data or "*" in data:
        base = base.rsplit("/", 1)[0] if "/" in base else "."
    return _join(base, MANIFEST)


def upload_dir(local: str | os.PathLike, url: str) -> None:
    """Copy a finished local shard set to an fsspec URL such as s3:// or gs:// (manifest last, so
    a reader never sees a manifest whose shards are not there yet). Uses fsspec when it has the
    protocol (s3fs / gcsfs installed), else the ``aws`` / ``gsutil`` command line."""
    import subprocess

    local = Path(local)
    files = sorted(p for p in local.iterdir() if p.is_file() and p.name != MANIFEST) + [local / MANIFEST]
    scheme = _scheme(url)
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
        fs, root = fsspec.core.url_to_fs(url)
        for f in files:
            fs.put_file(str(f), f"{root.rstrip('/')}/{f.name}")
        return
    except (ImportError, ValueError):
        pass
    tool = {"s3": ["aws", "s3", "cp"], "gs": ["gsutil", "cp"]}.get(scheme)
    if tool is None:
        raise ValueError(f"--out {url}: only local paths, s3:// and gs:// can be written")
    for f in files:
        subprocess.run([*tool, str(f), _join(url, f.name)], check=True)


def shard_tokenizer(data: str) -> str:
    """Local path of the tokenizer.json saved with a shard set (a directory, pattern or URL).
    A remote one is copied once into the cache (``RAYMMR_CACHE``, default ~/.cache/raymmr)."""
    location = _manifest_location(str(data)).rsplit("/", 1)[0] if _scheme(str(data)) else str(
        Path(_manifest_location(str(data))).parent)
    url = _join(location, "tokenizer.json")
    if not _scheme(url):
        return url
    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    from raymmr.storage import cache_dir

    local = cache_dir() / "tokenizers" / digest / "tokenizer.json"
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_suffix(".tmp")
        with open_url(url) as src, open(tmp, "wb") as dst:
            dst.write(src.read())
        tmp.rename(local)
    return str(local)


def read_manifest(path_or_url: str | os.PathLike) -> dict:
    """The manifest of a shard set: a directory/URL prefix, its manifest.json, or a shard pattern in it."""
    location = _manifest_location(str(path_or_url))
    try:
        with open_url(location) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise ShardError(f"{path_or_url}: no {MANIFEST} at {location}; write shards with "
                         "`python jobs/make_shards.py ...` or point at a shard set directory") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ShardError(f"{location}: cannot read the shard manifest: {e}") from None
    if manifest.get("format") != FORMAT or "splits" not in manifest:
        raise ShardError(f"{location}: not a raymmr shard manifest (format {manifest.get('format')!r})")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ShardError(f"{location}: schema_version {manifest.get('schema_version')} but this raymmr reads "
                         f"{SCHEMA_VERSION}; rewrite the shards with jobs/make_shards.py")
    return manifest


def record_fields(data: str) -> dict | None:
    """Where the samples of ``data`` keep their text, for a shard set raymmr did not write (its
    manifest's ``fields``, see ``raymmr.data.foreign``); None for raymmr's own shards or a
    pattern without a manifest."""
    try:
        return read_manifest(data).get("fields")
    except ShardError:
        return None


def _split_list(data: str) -> list[str]:
    """Split 'a,b c' at commas/whitespace outside braces ('x-{0..3}.tar,y.tar' -> 2 parts)."""
    parts, depth, cur = [], 0, ""
    for ch in data:
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0 and (ch == "," or ch.isspace()):
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in parts + [cur] if p]


TRAIN_SPLIT, PRETRAIN_SPLIT = "train", "pretrain"


def training_split(stage: str, manifest: dict) -> str:
    """The split a stage trains on: pre-training reads the shard set's pre-training corpus when it
    has one (SynthRad's ``pretrain``: images of its own), everything else the ``train`` split."""
    if stage == "pretrain" and PRETRAIN_SPLIT in (manifest or {}).get("splits", {}):
        return PRETRAIN_SPLIT
    return TRAIN_SPLIT


def shard_urls(data: str, split: str) -> list[str]:
    """The shard URLs of ``split`` in ``data``, in manifest order.

    ``data``: a shard set directory (local or remote prefix) with a manifest; a brace pattern or
    glob (``/d/train-{000000..000003}.tar``, ``s3://b/train-{0..9}.tar``, ``pipe:...``), in which
    case ``split`` is not used; or a comma/space separated list of these.
    Raises ShardError (a ValueError) naming a pattern that matches nothing.
    """
    import braceexpand

    data = str(data).strip()
    parts = _split_list(data)
    if len(parts) > 1:
        return [u for p in parts for u in shard_urls(p, split)]
    if not parts:
        raise ShardError("empty shard location; give a directory, a brace pattern or URLs")
    scheme = _scheme(data)
    if "{" in data or "*" in data or data.endswith(".tar") or scheme == "pipe":
        urls = list(braceexpand.braceexpand(data))
        if scheme:
            return urls
        found = [m for u in urls for m in (sorted(glob.glob(u)) if "*" in u else [u] if os.path.isfile(u) else [])]
        if not found:
            raise ShardError(f"shard pattern {data!r} matches no file")
        missing = [u for u in urls if "*" not in u and not os.path.isfile(u)]
        if missing:
            raise ShardError(f"shard pattern {data!r}: {len(missing)} of {len(urls)} files are missing, "
                             f"e.g. {missing[0]}")
        return found
    try:
        manifest = read_manifest(data)
    except ShardError:
        if scheme or not os.path.isdir(data):
            raise
        found = sorted(glob.glob(os.path.join(data, f"{split}-*.tar")))
        if not found:
            raise ShardError(f"{data}: no {MANIFEST} and no {split}-*.tar shard in it") from None
        return found
    if split not in manifest["splits"]:
        raise ShardError(f"{data}: the shard set has no split {split!r} (it has {', '.join(manifest['splits'])})")
    return [_join(data, s["name"]) for s in manifest["splits"][split]["shards"]]


def shard_counts(urls: list[str], manifest: dict | None) -> list[int | None]:
    """Samples per shard URL from the manifest (None where the manifest does not list it)."""
    by_name = {}
    for split in (manifest or {}).get("splits", {}).values():
        by_name.update({s["name"]: s["count"] for s in split["shards"]})
    return [by_name.get(u.rstrip("/").rsplit("/", 1)[-1]) for u in urls]


def validate_shards(directory: str, *, progress: bool = False) -> dict:
    """Check a shard set against its manifest; see ``raymmr.data.validate`` (kept there: it is long)."""
    from raymmr.data.validate import validate_shards as _validate

    return _validate(directory, progress=progress)


# --------------------------------------------------------------------------- making shard sets


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
    from raymmr.data import synthrad

    return {"generator": "synthrad", "generator_version": synthrad.GENERATOR_VERSION, "seed": data_cfg.seed,
            "image_size": data_cfg.image_size, "image_format": image_format,
            "samples_per_shard": data_cfg.samples_per_shard, "domains": data_cfg.synthrad_domains,
            "test_domain": data_cfg.synthrad_test_domain, **{f"images_{k}": v for k, v in synthrad.split_sizes(data_cfg).items()}}


def _synthrad_block(args) -> list[Sample]:
    """Samples of images [start, stop) of a split, images encoded once and shared (picklable)."""
    split, start, stop, kw, image_format = args
    from raymmr.data import synthrad

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

    from raymmr.data import synthrad

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
                  test_domain=data_cfg.synthrad_test_domain, seed=data_cfg.seed)
        if not 0 <= kw["test_domain"] < kw["num_domains"]:
            raise ShardError(f"data.synthrad_test_domain={kw['test_domain']} must be < data.synthrad_domains={kw['num_domains']}")
        with tqdm(total=sum(sizes.values()), unit="image", desc=f"SynthRad -> {out}", disable=not progress) as bar:
            streams = {split: _synthrad_stream(split, n, kw, "jpg", workers, bar) for split, n in sizes.items()}
            return write_shards(streams, out, image_size=data_cfg.image_size, samples_per_shard=data_cfg.samples_per_shard,
                                source="synthrad", config=config, progress=False)


SOURCES_WITHOUT_VAL = ("vqa-rad", "pmc-vqa")


def make_converted_shards(
    name: str, src: str | os.PathLike, out_dir: str | os.PathLike, data_cfg, *, vocab: str = "train",
    val_fraction: float | None = None, progress: bool = True,
) -> dict:
    """Convert a public dataset (``raymmr.data.converters``) to a shard set; returns the manifest.

    ``vocab``: "train" (clean protocol) or "all" (paper-compatible: answers of every split).
    ``val_fraction``: share of train images moved to a val split, grouped by image so that no
    image is in both (default 0.1 for sources without a validation split, else 0).
    """
    from raymmr.data.converters import convert

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
