"""Shared pieces of the dataset converters: errors, row checks, image lookup, skip accounting.

Policy shared by every converter (docs/SPEC.md §1, docs/DATA_FORMATS.md):
- a folder that is not the expected layout, or a file missing a required column/field, raises
  ``ConverterError`` naming the file, the field (and row) and how to fix it: these are user
  errors that would otherwise produce a silently wrong dataset;
- a row whose image file is missing is skipped and counted (public copies often lack a few
  images), and one summary warning is logged at the end; but if *no* image at all is found the
  image folder is almost surely wrong, so that raises, naming the folder that was searched;
- metadata labels (organ, modality, question type, answer type) are lower-cased; answers go
  through ``normalize_answer``.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections import Counter
from pathlib import Path

from raymmr.data.answers import normalize_answer

logger = logging.getLogger("raymmr.data.making.converters")

SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
}
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MISSING_IMAGE = "rows with a missing image"  # the Skips reason check_some_images looks for


class ConverterError(ValueError):
    """A dataset folder or file does not have the public layout the converter reads."""


def normalise_split(name: str, where: Path | str) -> str:
    """Map a split folder/file name (train, validation, val, validate, test, ...) to train/val/test."""
    split = SPLITS.get(name.strip().lower())
    if split is None:
        raise ConverterError(f"{where}: unknown split name {name!r}; expected one of {sorted(SPLITS)}")
    return split


def label(value) -> str:
    """A metadata label as stored in samples: stripped, lower-cased, inner spaces collapsed."""
    if value is None:
        return ""
    return " ".join(str(value).split()).lower()


def answer_type(value, path: Path, row: int) -> str:
    """Map OPEN / CLOSED / "CLOSED " (VQA-RAD has a trailing space) to "open" / "closed"."""
    kind = label(value)
    if kind not in ("open", "closed"):
        raise ConverterError(
            f"{path}: row {row} has answer_type {value!r}; expected OPEN or CLOSED "
            f"(case and surrounding spaces are ignored). Fix the row or drop it from the file."
        )
    return kind


class KeyMaker:
    """WebDataset-safe, unique sample keys.

    WebDataset splits a member name at its first dot, so keys keep only [A-Za-z0-9_-]; a
    repeated key (e.g. a qid reused in one file) gets a "-2", "-3", ... suffix in file order,
    which keeps keys deterministic across runs.
    """

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, *parts) -> str:
        base = "-".join(_KEY_UNSAFE.sub("_", str(p)).strip("_") or "x" for p in parts)
        key, n = base, 1
        while key in self._seen:
            n += 1
            key = f"{base}-{n}"
        self._seen.add(key)
        return key


def read_json_rows(
    path: Path, required: tuple[str, ...], fix: str, aliases: dict[str, tuple[str, ...]] | None = None
) -> list[dict]:
    """Read a JSON list of row objects and check every row has the ``required`` fields.

    ``aliases`` maps a canonical field name to other spellings that are accepted (renamed to the
    canonical name in the returned rows). ``fix`` ends every error message.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ConverterError(f"{path}: not valid JSON ({e}). {fix}") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConverterError(
            f"{path}: expected a JSON list of objects (one per question), got {type(data).__name__}. {fix}"
        )
    aliases = aliases or {}
    for i, row in enumerate(data):
        for name, others in aliases.items():
            if name not in row:
                for other in others:
                    if other in row:
                        row[name] = row.pop(other)
                        break
        for name in required:
            if name not in row:
                spelled = "/".join((name, *aliases.get(name, ())))
                ident = f" (qid {row['qid']})" if "qid" in row else ""
                raise ConverterError(f"{path}: row {i}{ident} has no field {spelled!r}. {fix}")
    return data


class ImageStore:
    """Finds an image by its dataset-relative name in candidate folders, then in zip archives.

    Existence is cached per name because VQA datasets ask the same image for many questions.
    Only the encoded bytes are read: decoding and resizing are the shard writer's job.
    """

    def __init__(self, folders: list[Path], zips: list[Path] = ()) -> None:
        self.folders = list(folders)
        self._zips = [zipfile.ZipFile(z) for z in zips if z.is_file()]
        self._zip_index: dict[str, tuple[zipfile.ZipFile, str]] = {}
        for zf in self._zips:  # basename -> member, so "images/x.jpg" and "x.jpg" both resolve
            for member in zf.namelist():
                if not member.endswith("/"):
                    self._zip_index.setdefault(member.rsplit("/", 1)[-1], (zf, member))
        self._where: dict[str, Path | tuple[zipfile.ZipFile, str] | None] = {}

    def _locate(self, name: str):
        if name not in self._where:
            found = None
            rel = Path(name)
            for folder in self.folders:
                for candidate in (folder / rel, folder / rel.name):
                    if candidate.is_file():
                        found = candidate
                        break
                if found is not None:
                    break
            if found is None:
                found = self._zip_index.get(rel.name)
            self._where[name] = found
        return self._where[name]

    def read(self, name: str) -> bytes | None:
        """The encoded image bytes, or None when the image is in none of the places searched."""
        where = self._locate(name)
        if where is None:
            return None
        if isinstance(where, Path):
            return where.read_bytes()
        zf, member = where
        return zf.read(member)

    def describe(self) -> str:
        places = [str(f) for f in self.folders] + [z.filename for z in self._zips]
        return ", ".join(places)

    def close(self) -> None:
        for zf in self._zips:
            zf.close()


class Skips:
    """Counts skipped rows by reason; logs one summary instead of a warning per row."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, example)

    def report(self, yielded: int) -> None:
        if not self.counts:
            logger.info("%s: converted %d samples", self.source, yielded)
            return
        parts = [f"{n} {reason} (first: {self.examples[reason]})" for reason, n in self.counts.most_common()]
        logger.warning("%s: converted %d samples, skipped %s", self.source, yielded, "; ".join(parts))


def vqa_row(row: dict, path: Path, i: int, *, image_name: str, shown: str, images: ImageStore, skips: Skips):
    """(answer_type, question, answer, image bytes) of one VQA row, or None when the row is skipped
    (empty question or answer, image not found; counted in ``skips``). ``shown`` is how the image
    is named in the skip summary."""
    kind = answer_type(row["answer_type"], path, i)
    answer = normalize_answer(row["answer"])
    question = " ".join(str(row["question"]).split())
    if not answer or not question:
        skips.add("rows with an empty question or answer", f"{path.name} row {i}")
        return None
    image = images.read(image_name)
    if image is None:
        skips.add(MISSING_IMAGE, f"{shown} ({path.name} row {i})")
        return None
    return kind, question, answer, image


def check_some_images(source: str, yielded: int, skips: Skips, expected: str, fix: str) -> None:
    """Raise when rows existed but not one of their images did: the image folder is wrong."""
    missing = skips.counts.get(MISSING_IMAGE, 0)
    if yielded == 0 and missing > 0:
        raise ConverterError(
            f"{source}: none of the images of {missing} rows was found (first missing: "
            f"{skips.examples[MISSING_IMAGE]}); looked in {expected}. {fix}"
        )
