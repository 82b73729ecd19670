"""Check a shard set against its manifest before a long run trusts it.

``validate_shards(dir)`` reads every shard completely and reports, by shard and member: files
missing or of the wrong size, checksum mismatches, truncated/corrupt tars, sample counts that
differ from the manifest, JSON records that break the schema (raymmr.data.schema), images that
do not decode or have the wrong size, duplicate keys, and stray tars the manifest does not list.
``python jobs/make_shards.py validate DIR`` prints the report and exits non-zero on any error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zlib
from pathlib import Path

from PIL import Image

from raymmr.data.schema import ANSWER_TYPES, IMAGE_EXTS, KINDS, SCHEMA_VERSION, Sample
from raymmr.data.shards import SHARD_NAME, ShardError, read_manifest
from raymmr.data.tario import iter_tar

_STR_FIELDS = [f.name for f in dataclasses.fields(Sample) if f.type in ("str", str)]
_REQUIRED = [f.name for f in dataclasses.fields(Sample) if f.name != "image"] + ["schema_version"]


def check_record(record, split: str | None = None) -> list[str]:
    """Schema problems of one JSON record (empty list when it is valid)."""
    if not isinstance(record, dict):
        return [f"JSON is a {type(record).__name__}, not an object"]
    problems = [f"missing field {name!r}" for name in _REQUIRED if name not in record]
    problems += [f"field {name!r} is {type(record[name]).__name__}, not str"
                 for name in _STR_FIELDS if name in record and not isinstance(record[name], str)]
    if problems:
        return problems
    if record["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {record['schema_version']!r}, expected {SCHEMA_VERSION}")
    if record["kind"] not in KINDS:
        problems.append(f"kind {record['kind']!r} is not one of {KINDS}")
    elif record["kind"] == "caption" and not record["caption"].strip():
        problems.append("caption sample with an empty caption")
    elif record["kind"] == "vqa" and not (record["question"].strip() and record["answer"].strip()):
        problems.append("vqa sample without question or answer")
    if record["answer_type"] not in ("",) + ANSWER_TYPES:
        problems.append(f"answer_type {record['answer_type']!r} is not one of {('',) + ANSWER_TYPES}")
    if not isinstance(record["extra"], dict):
        problems.append("field 'extra' is not an object")
    if split is not None and record["split"] != split:
        problems.append(f"split {record['split']!r} in a {split!r} shard")
    return problems


def _check_shard(data: bytes, name: str, image_size: int | None, split: str | None, keys: set[str],
                 fields: dict | None = None) -> tuple[int, list[str], list[str]]:
    """(samples, errors, warnings) of one shard's bytes; every message names shard and member.
    ``fields``: a foreign shard set's (``raymmr.data.making.foreign``): its own JSON is not a raymmr record."""
    errors, warnings = [], []
    samples: dict[str, dict[str, bytes]] = {}
    member = "(start)"
    try:
        for member, payload in iter_tar(io.BytesIO(data)):
            key, _, ext = member.rsplit("/", 1)[-1].partition(".")
            samples.setdefault(key, {})[ext.lower()] = payload
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        errors.append(f"{name}: truncated or corrupt tar after member {member} ({type(e).__name__}: {e})")
    for key, members in samples.items():
        where = f"{name}:{key}"
        if key in keys:
            errors.append(f"{where}: key occurs in another shard too")
        keys.add(key)
        unknown = sorted(set(members) - set(IMAGE_EXTS) - {"json", "txt"})
        if unknown:
            warnings.append(f"{where}: members with extensions {unknown} are never decoded by the loader")
        if fields is not None:
            from raymmr.data.tario import foreign_record

            try:
                foreign_record({"__key__": key, **members}, fields, split or "")
            except ValueError as e:  # counted as skipped when the set was indexed; the loader skips it
                warnings.append(f"{where}: {e}; the loader skips it")
        elif "json" in members:
            try:
                record = json.loads(members["json"])
                errors += [f"{where}.json: {p}" for p in check_record(record, split)]
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                errors.append(f"{where}.json: malformed JSON ({e})")
        elif "txt" not in members:
            errors.append(f"{where}: no .json (or .txt) member: the sample has no text")
        image_ext = next((e for e in IMAGE_EXTS if e in members), None)
        if image_ext is None:
            errors.append(f"{where}: no image member (.jpg/.jpeg/.png/.webp)")
            continue
        try:
            with Image.open(io.BytesIO(members[image_ext])) as im:
                im.load()
                if image_size and im.size != (image_size, image_size):
                    errors.append(f"{where}.{image_ext}: image is {im.size[0]}x{im.size[1]}, manifest says {image_size}")
        except Exception as e:  # noqa: BLE001 - PIL raises SyntaxError, struct.error, ... on bad bytes
            errors.append(f"{where}.{image_ext}: image does not decode ({type(e).__name__}: {e})")
    return len(samples), errors, warnings


def validate_shards(directory: str, *, progress: bool = False) -> dict:
    """Validate the shard set in ``directory``; see the module docstring.

    Returns ``{"ok": bool, "errors": [...], "warnings": [...], "bad_shards": [names],
    "splits": {split: {"shards": n, "samples": n}}}``; ``ok`` is False on any error.
    """
    from tqdm.auto import tqdm

    root = Path(directory)
    errors, warnings, bad = [], [], set()
    report = {"directory": str(root), "splits": {}}
    if not root.is_dir():
        return {**report, "ok": False, "errors": [f"{root}: not a directory"], "warnings": [], "bad_shards": []}
    try:
        manifest = read_manifest(str(root))
    except ShardError as e:
        manifest = None
        errors.append(str(e))
    if manifest is None:  # still check what is there, without counts or checksums
        listed: dict[str, list[dict]] = {}
        for p in sorted(root.glob("*.tar")):
            m = SHARD_NAME.match(p.name)
            if m:
                listed.setdefault(m["split"], []).append({"name": p.name})
        image_size = None
    else:
        listed = {split: info["shards"] for split, info in manifest["splits"].items()}
        image_size = manifest.get("image_size")
        if manifest.get("tokenizer") and not (root / manifest["tokenizer"]).is_file():
            errors.append(f"{root / manifest['tokenizer']}: listed in the manifest but missing")
    keys: set[str] = set()
    todo = [(split, s) for split, shards in listed.items() for s in shards]
    for split, entry in tqdm(todo, desc=f"validate {root}", unit="shard", disable=not progress):
        name, path = entry["name"], root / entry["name"]
        if not path.is_file():
            errors.append(f"{name}: listed in the manifest but missing")
            bad.add(name)
            continue
        data = path.read_bytes()
        shard_errors = []
        if "bytes" in entry and len(data) != entry["bytes"]:
            shard_errors.append(f"{name}: {len(data)} bytes, manifest says {entry['bytes']} (truncated or rewritten?)")
        if "sha256" in entry and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            shard_errors.append(f"{name}: sha256 differs from the manifest")
        n, member_errors, member_warnings = _check_shard(data, name, image_size, split, keys,
                                                         (manifest or {}).get("fields"))
        if "count" in entry and n != entry["count"]:
            shard_errors.append(f"{name}: {n} samples, manifest says {entry['count']}")
        shard_errors += member_errors
        warnings += member_warnings
        if shard_errors:
            bad.add(name)
            errors += shard_errors
        stats = report["splits"].setdefault(split, {"shards": 0, "samples": 0})
        stats["shards"] += 1
        stats["samples"] += n
    listed_names = {s["name"] for _, s in todo}
    warnings += [f"{p.name}: a tar the manifest does not list (ignored by the loader)"
                 for p in sorted(root.glob("*.tar")) if p.name not in listed_names]
    return {**report, "ok": not errors, "errors": errors, "warnings": warnings, "bad_shards": sorted(bad)}


def format_report(report: dict) -> str:
    """Human-readable lines for the CLI."""
    lines = [f"{report['directory']}: " + ("OK" if report["ok"] else f"{len(report['errors'])} error(s) in "
                                           f"{len(report['bad_shards'])} shard(s): {', '.join(report['bad_shards'])}")]
    lines += [f"  {split}: {s['shards']} shards, {s['samples']} samples" for split, s in report["splits"].items()]
    lines += [f"ERROR {e}" for e in report["errors"]] + [f"warning {w}" for w in report["warnings"]]
    return "\n".join(lines)
