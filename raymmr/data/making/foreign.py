"""Shard sets raymmr did not write (img2dataset and the like), used where they are.

An img2dataset shard holds ``KEY.jpg`` (or .jpeg/.png/.webp), ``KEY.txt`` (the caption) and
``KEY.json`` (its own metadata: url, size, status, often the caption again), and the set has no
manifest. ``index_shards`` writes one beside the shards, without rewriting them: per-shard sample
counts, sizes and checksums, a split for every shard, the answer vocabulary of the train split
and a tokenizer trained on its texts. The manifest's ``fields`` tells every reader (loader,
validation, evaluation) where each sample's text and labels are:

    caption=txt                 the .txt member (img2dataset's default)
    caption=json:caption        a field of the .json member
    domain=json:source          optional labels: domain, modality, organ (json fields only)

Every sample of such a set is a caption sample: a caption-only set is a pre-training set
(fine-tuning needs VQA samples and says so). Splits are per shard: a rule the user gives
(``--split val=00009*.tar``: shards whose name matches go to that split, the rest to train) or
a deterministic hash of the shard names (``--val-fraction``/``--test-fraction``).
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import math
import tempfile
from pathlib import Path

from raymmr import storage
from raymmr.data.schema import IMAGE_EXTS, SCHEMA_VERSION
from raymmr.data.shards import FORMAT, MANIFEST, ShardError
from raymmr.data.tario import DEFAULT_FIELDS, FIELDS, foreign_record


def parse_fields(specs: list[str]) -> dict[str, str]:
    """``["caption=json:text", "domain=json:source"]`` -> {"caption": "json:text", ...}, checked."""
    fields = dict(DEFAULT_FIELDS)
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep or name not in FIELDS:
            raise ShardError(f"--field {spec!r}: expected NAME=SOURCE with NAME one of {', '.join(FIELDS)}")
        if not (where == "txt" and name == "caption") and not (where.startswith("json:") and len(where) > 5):
            raise ShardError(f"--field {spec!r}: SOURCE is 'json:FIELD'" + (" or 'txt'" if name == "caption" else ""))
        fields[name] = where
    return fields


def assign_splits(names: list[str], rules: dict[str, str], val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Shard name -> split: the first rule whose glob matches, else by hash (the same names always
    get the same splits, whatever their order), else train."""
    out = {}
    for name in names:
        out[name] = next((split for split, pattern in rules.items() if fnmatch.fnmatch(name, pattern)), "")
    rest = sorted((n for n in names if not out[n]), key=lambda n: hashlib.sha1(n.encode()).hexdigest())
    n_val, n_test = math.ceil(val_fraction * len(rest)), math.ceil(test_fraction * len(rest))
    for i, name in enumerate(rest):
        out[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def index_shards(location: str, *, fields: dict[str, str] | None = None, rules: dict[str, str] | None = None,
                 val_fraction: float = 0.0, test_fraction: float = 0.0, tokenizer_vocab_size: int = 8192,
                 progress: bool = False) -> dict:
    """Write manifest.json and tokenizer.json beside the ``*.tar`` shards in ``location`` (a
    directory or storage URL), reading every shard once; the shards are not touched. Returns
    the manifest."""
    from tqdm.auto import tqdm

    from raymmr.data.answers import build_answer_vocab
    from raymmr.data.tario import Problems, read_tar
    from raymmr.data.tokenizer import TOKENIZER_FILE, train_tokenizer

    fields = fields or dict(DEFAULT_FIELDS)
    location = storage.normalize(location)
    listed = storage.names(location)  # one listing: a bucket prefix may hold many shards
    names = [n for n in listed if n.endswith(".tar")]
    if not names:
        raise ShardError(f"{location}: no .tar shard in it")
    if MANIFEST in listed:
        raise ShardError(f"{location} already has a {MANIFEST}: remove it to index the shards again")
    split_of = assign_splits(names, rules or {}, val_fraction, test_fraction)
    splits: dict[str, dict] = {}
    texts, sizes, domains = [], set(), set()
    for name in tqdm(names, desc=f"index {location}", unit="shard", disable=not progress):
        url, split = storage.join(location, name), split_of[name]
        shard = _Hashing(storage.open_url(url))  # one read per shard: samples and checksum together
        problems = Problems()
        count = skipped = 0
        for raw in read_tar(url, problems, stream=shard):
            ext = next((e for e in IMAGE_EXTS if e in raw), None)
            try:
                record = foreign_record(raw, fields, split)
                if ext is None:
                    raise ValueError("no image member")
            except ValueError:
                skipped += 1
                continue
            finally:
                count += 1
            sizes.add(_image_size(raw[ext]))
            domains.add(record["domain"])
            if split == "train":
                texts.append(record["caption"])
        if problems.skipped:
            raise ShardError(f"{url}: unreadable (truncated or corrupt tar): fix or remove it, then index again")
        entry = splits.setdefault(split, {"count": 0, "shards": [], "domains": [], "kinds": {"caption": 0},
                                          "answer_types": {}, "skipped": 0})  # fmt: skip
        # ``count``: every sample in the shard (what validation counts); ``skipped``: those without
        # an image or a caption, which the loader skips with a warning.
        entry["shards"].append({"name": name, "count": count, "bytes": shard.bytes, "sha256": shard.sha256.hexdigest()})
        entry["count"] += count
        entry["kinds"]["caption"] += count - skipped
        entry["skipped"] += skipped
    if sum(s["kinds"]["caption"] for s in splits.values()) == 0:
        raise ShardError(f"{location}: no sample with an image and a caption (fields {fields})")
    for entry in splits.values():
        entry["domains"] = sorted(d for d in domains if d)
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "source": "foreign",
        "image_size": sizes.pop() if len(sizes) == 1 else None, "image_format": "", "samples_per_shard": None,
        "splits": splits, "answers": build_answer_vocab([]), "vocab_splits": ["train"], "question_types": [],
        "organs": [], "domains": sorted(d for d in domains if d), "modalities": [], "tokenizer": None,
        "fields": fields, "config": {"index": {"rules": rules or {}, "val_fraction": val_fraction,
                                               "test_fraction": test_fraction}},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if texts:
            train_tokenizer(texts, tmp, vocab_size=tokenizer_vocab_size)
            storage.put(Path(tmp) / TOKENIZER_FILE, storage.join(location, TOKENIZER_FILE))
            manifest["tokenizer"] = TOKENIZER_FILE
    storage.write_text(storage.join(location, MANIFEST), json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def _image_size(data: bytes) -> int | None:
    """The side of a square image (from its header), else None."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # noqa: BLE001 - a bad image is the validator's to report
        return None
    return w if w == h else None


class _Hashing:
    """A read-only stream that hashes and counts what is read; closing reads the rest first (the
    tar reader stops at the end-of-archive marker, the checksum covers the whole file)."""

    def __init__(self, f):
        self._f, self.sha256, self.bytes = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def close(self) -> None:
        while self.read(1 << 20):
            pass
        self._f.close()
