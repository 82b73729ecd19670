"""WebDataset shard sets: the layout, the manifest, finding and opening shard URLs (docs/SPEC.md §1).
Writing a set: `raymmr.data.making.writer`; making one (SynthRad, a converted dataset): `raymmr.data.making.sets`.

Layout of a shard set directory::

    OUT/train-000000.tar ...   standard tar: {key}.jpg|png (image, image_size²) + {key}.json (Sample.record())
    OUT/val-000000.tar ...
    OUT/test-000000.tar ...
    OUT/tokenizer.json         BPE tokenizer trained on the train texts (raymmr.data.tokenizer)
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
import glob
import json
import os
import re

from raymmr import storage
from raymmr.data.schema import SCHEMA_VERSION

MANIFEST = "manifest.json"
FORMAT = "raymmr-webdataset"
SHARD_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")


class ShardError(ValueError):
    """A shard set, pattern or sample that cannot be used; the message names it and the fix."""




def _manifest_location(data: str) -> str:
    base = data.split("{")[0] if ("{" in data or "*" in data) else data
    if base.endswith(".json"):
        return base
    if base.endswith(".tar") or "{" in data or "*" in data:
        base = storage.parent(base)
    return storage.join(base, MANIFEST)


def shard_tokenizer(data: str) -> str:
    """Local path of the tokenizer.json saved with a shard set (a directory, pattern or URL).
    A remote one is copied into this node's cache once per version of it (``storage.cached_copy``:
    a tokenizer rewritten at the same URL is copied anew)."""
    url = storage.join(storage.parent(_manifest_location(str(data))), "tokenizer.json")
    if not storage.is_remote(url):
        return url
    return str(storage.cached_copy(url, "tokenizers", name="tokenizer.json"))


def _has_tar_shards(folder: str) -> bool:
    """Whether ``folder`` (a directory or URL prefix) holds .tar files (a cheap listing)."""
    with contextlib.suppress(Exception):  # a listing that fails only loses the hint
        return any(name.endswith(".tar") for name in storage.names(folder))
    return False


def read_manifest(path_or_url: str | os.PathLike) -> dict:
    """The manifest of a shard set: a directory/URL prefix, its manifest.json, or a shard pattern in it."""
    location = _manifest_location(str(path_or_url))
    try:
        with storage.open_url(location) as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        folder = storage.parent(location)
        if _has_tar_shards(folder):  # shards another tool wrote (img2dataset): indexed where they are
            raise ShardError(f"{path_or_url}: tar shards without a {MANIFEST}; index them in place: "
                             f"python jobs/make_shards.py index {folder} (--val-fraction for a val split)") from None
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
    manifest's ``fields``, see ``raymmr.data.making.foreign``); None for raymmr's own shards or a
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


def training_domains(manifest: dict) -> set[str]:
    """The domains a downstream model trains on (the ``train`` split's): a question from any other
    domain is *cross-domain*, in evaluation (``vqa_cross_domain``) and in-run validation
    (``val_vqa_accuracy_cross_domain``) alike. Empty when the manifest records none."""
    return set((manifest or {}).get("splits", {}).get(TRAIN_SPLIT, {}).get("domains", []))


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
    scheme = storage.scheme(data)
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
    return [storage.join(data, s["name"]) for s in manifest["splits"][split]["shards"]]


def shard_counts(urls: list[str], manifest: dict | None) -> list[int | None]:
    """Samples per shard URL from the manifest (None where the manifest does not list it)."""
    by_name = {}
    for split in (manifest or {}).get("splits", {}).values():
        by_name.update({s["name"]: s["count"] for s in split["shards"]})
    return [by_name.get(u.rstrip("/").rsplit("/", 1)[-1]) for u in urls]
