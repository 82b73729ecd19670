"""PMC-VQA (HF xmcmic/PMC-VQA) -> Samples (docs/DATA_FORMATS.md).

Layout::

    train.csv  test.csv  test_clean.csv  images/  (or images.zip)        version 1
    train_2.csv  test_2.csv  images_2/  (or images_2.zip)                 version 2

CSV columns: ``Figure_path, Question, Answer, Choice A, Choice B, Choice C, Choice D,
Answer_label``; the first card revision (and MedVInT-TD) spell ``Answer`` as ``Anwser``,
both are accepted. ``Caption`` is optional (absent from the HF CSVs) and kept in
``extra["caption"]`` when present. Choices look like ``"A:Diffuse uptake pattern"``; the
"A:" prefix is stripped. Images are looked up in ``images/``, ``images_2/``, ``figures/`` and
the dataset folder, then inside ``images.zip`` / ``images_2.zip`` so the archive need not be
unpacked.

Decisions:
- answer text = the ``Answer`` column; when it is empty, the choice named by ``Answer_label``.
  ``extra`` keeps ``choices`` (texts) and ``answer_label`` so a multiple-choice evaluator can
  restrict predictions to the four candidates.
- ``answer_type = "open"`` for every row: PMC-VQA answers are free text drawn from a
  per-question candidate set, not a fixed yes/no; in the open/closed sense of VQA-RAD and SLAKE
  (closed = yes/no-style) they are open.
- splits: PMC-VQA has no validation split (the clean protocol carves one from train). Version
  1's test split is ``test_clean.csv`` (the manually checked 2k-question benchmark the paper
  reports on) when present, else ``test.csv``; pass ``clean_test=False`` for the full one.
- ``domain = "pmc-vqa"``; a row whose ``Question``/answer cell is empty is skipped and counted.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from raymmr.data.answers import normalize_answer
from raymmr.data.making.converters.common import (
    MISSING_IMAGE,
    ConverterError,
    ImageStore,
    KeyMaker,
    Skips,
    check_some_images,
    logger,
)
from raymmr.data.schema import Sample

SOURCE = "pmc-vqa"
CHOICE_COLUMNS = ("Choice A", "Choice B", "Choice C", "Choice D")
IMAGE_FOLDERS = ("images", "images_2", "figures", ".")
_CHOICE_PREFIX = re.compile(r"^\s*([A-D])\s*[:.)]\s*")
_FIX = "Fix: use the unmodified CSVs of the HF dataset xmcmic/PMC-VQA."


def _files(root: Path, version: int | None, clean_test: bool) -> list[tuple[Path, str]]:
    if version is None:
        version = 1 if ((root / "train.csv").is_file() or (root / "test.csv").is_file()) else 2
    if version == 1:
        test = "test_clean.csv" if clean_test and (root / "test_clean.csv").is_file() else "test.csv"
        wanted = [("train.csv", "train"), (test, "test")]
    elif version == 2:
        wanted = [("train_2.csv", "train"), ("test_2.csv", "test")]
    else:
        raise ValueError(f"PMC-VQA version must be 1, 2 or None (auto), got {version!r}")
    found = [(root / name, split) for name, split in wanted if (root / name).is_file()]
    if not found:
        raise ConverterError(
            f"{root}: not a PMC-VQA folder: none of {[n for n, _ in wanted]} found (version {version}). "
            f"Fix: pass the folder holding train.csv/test.csv (or train_2.csv/test_2.csv for version 2)."
        )
    for name, _ in wanted:
        if not (root / name).is_file():
            logger.warning("%s: %s not found; converting the other split only", root, name)
    return found


def _read_csv(path: Path) -> tuple[list[dict], str]:
    """Rows with stripped header names, and the name of the answer column (Answer or Anwser)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        rows = list(reader)
    answer_col = next((c for c in ("Answer", "Anwser") if c in header), None)
    for field in ("Figure_path", "Question"):
        if field not in header:
            raise ConverterError(f"{path}: no {field!r} column (header: {header}). {_FIX}")
    if answer_col is None and "Answer_label" not in header:
        raise ConverterError(
            f"{path}: no 'Answer' (or 'Anwser') column and no 'Answer_label' column (header: {header}). {_FIX}"
        )
    if answer_col is None and not all(c in header for c in CHOICE_COLUMNS):
        raise ConverterError(
            f"{path}: no 'Answer' column, and 'Answer_label' needs the columns {list(CHOICE_COLUMNS)}. {_FIX}"
        )
    return rows, answer_col or ""


def _cell(row: dict, column: str) -> str:
    return " ".join((row.get(column) or "").split())


def convert_pmc_vqa(root: Path | str, *, version: int | None = None, clean_test: bool = True) -> Iterator[Sample]:
    """Yield PMC-VQA samples (kind "vqa") from ``root``; see the module docstring for choices.

    version: 1, 2 or None (1 when train.csv/test.csv exist, else 2). CSV headers are checked
    now; images are read as the iterator is consumed.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConverterError(f"{root}: not a folder. Fix: pass the PMC-VQA folder holding train.csv and test.csv.")
    tables = [(path, split, *_read_csv(path)) for path, split in _files(root, version, clean_test)]
    images = ImageStore([root / f for f in IMAGE_FOLDERS], zips=[root / "images.zip", root / "images_2.zip"])
    return _samples(tables, images)


def _samples(tables, images: ImageStore) -> Iterator[Sample]:
    keys, skips, yielded = KeyMaker(), Skips(SOURCE), 0
    try:
        for path, split, rows, answer_col in tables:
            for i, row in enumerate(rows):
                choices = [_CHOICE_PREFIX.sub("", _cell(row, c)) for c in CHOICE_COLUMNS if c in row]
                answer_label = _cell(row, "Answer_label").upper()
                text = _CHOICE_PREFIX.sub("", _cell(row, answer_col)) if answer_col else ""
                if not text and answer_label in ("A", "B", "C", "D") and len(choices) == 4:
                    text = choices["ABCD".index(answer_label)]
                answer, question = normalize_answer(text), _cell(row, "Question")
                if not answer or not question:
                    skips.add("rows with an empty question or answer", f"{path.name} row {i}")
                    continue
                figure = _cell(row, "Figure_path")
                image = images.read(figure) if figure else None
                if image is None:
                    skips.add(MISSING_IMAGE, f"{figure!r} ({path.name} row {i})")
                    continue
                extra = {"figure_path": figure, "choices": choices, "answer_label": answer_label, "file": path.name}
                if _cell(row, "Caption"):
                    extra["caption"] = _cell(row, "Caption")
                yield Sample(
                    key=keys(SOURCE, path.stem, i),
                    kind="vqa",
                    image=image,
                    question=question,
                    answer=answer,
                    answer_type="open",
                    domain=SOURCE,
                    split=split,
                    source=SOURCE,
                    extra=extra,
                )
                yielded += 1
    finally:
        images.close()
    skips.report(yielded)
    check_some_images(
        SOURCE, yielded, skips, images.describe(), "Fix: unzip images.zip beside the CSVs (or leave images.zip there)."
    )
