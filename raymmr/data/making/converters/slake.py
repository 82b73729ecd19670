"""SLAKE -> Samples (docs/DATA_FORMATS.md).

Layout (``Slake1.0/`` as shipped with the PMC-VQA repository and the SLAKE release)::

    train.json  validate.json  test.json    JSON lists: img_id, img_name, question, answer,
                                            q_lang, location, modality, answer_type,
                                            base_type, content_type, triple, qid
    imgs/xmlabN/source.jpg                  image of row with img_name "xmlabN/source.jpg"

``validate`` becomes split "val". Only English rows (``q_lang == "en"``) are kept by default,
as in the M3AE protocol (SLAKE-en); the Chinese rows are counted in the log.

Field mapping: ``location`` -> organ, ``modality`` -> modality, ``content_type`` ->
question_type (all lower-cased, so "X-Ray" -> "x-ray"); ``base_type``, ``triple``, ``img_id``
and ``qid`` go to ``extra``. Every sample has ``domain = "slake"``: the domain is the source
institution; modality is a separate field, so a cross-modality split can still be made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from raymmr.data.making.converters.common import (
    ConverterError,
    ImageStore,
    KeyMaker,
    Skips,
    check_some_images,
    label,
    logger,
    read_json_rows,
    vqa_row,
)
from raymmr.data.schema import Sample

SOURCE = "slake"
FILES = {"train.json": "train", "validate.json": "val", "test.json": "test"}
REQUIRED = ("img_name", "question", "answer", "q_lang", "answer_type")
_FIX = "Fix: use the unmodified Slake1.0 folder (train.json, validate.json, test.json and imgs/)."


def convert_slake(root: Path | str, *, languages: Iterable[str] = ("en",)) -> Iterator[Sample]:
    """Yield SLAKE samples (kind "vqa") from ``root`` (the Slake1.0 folder or its parent).

    languages: the ``q_lang`` values to keep ("en", "zh"). The layout and every row's fields
    are checked now; samples are produced as the iterator is consumed.
    """
    root = Path(root)
    base = next((b for b in (root, root / "Slake1.0") if (b / "train.json").is_file()), None)
    if base is None:
        raise ConverterError(
            f"{root}: not a SLAKE folder: no train.json in it or in Slake1.0/. "
            f"Fix: pass the Slake1.0 folder (train.json, validate.json, test.json and imgs/)."
        )
    missing = [f for f in FILES if not (base / f).is_file()]
    if missing:
        raise ConverterError(f"{base}: SLAKE is missing {', '.join(missing)}. {_FIX}")
    if isinstance(languages, str) or not tuple(languages):
        raise ValueError(f"languages must be a non-empty list such as ['en'], got {languages!r}")
    languages = tuple(label(lang) for lang in languages)
    tables = [(base / f, split, read_json_rows(base / f, REQUIRED, _FIX)) for f, split in FILES.items()]
    return _samples(tables, ImageStore([base / "imgs"]), languages)


def _samples(tables, images: ImageStore, languages: tuple[str, ...]) -> Iterator[Sample]:
    keys, skips, yielded = KeyMaker(), Skips(SOURCE), 0
    other_language = 0
    for path, split, rows in tables:
        for i, row in enumerate(rows):
            if label(row["q_lang"]) not in languages:
                other_language += 1  # expected, not a data problem: info, not a warning
                continue
            name = str(row["img_name"])
            fields = vqa_row(row, path, i, image_name=name, shown=f"imgs/{name}", images=images, skips=skips)
            if fields is None:
                continue
            kind, question, answer, image = fields
            qid = row.get("qid", i)
            yield Sample(
                key=keys(SOURCE, split, qid),
                kind="vqa",
                image=image,
                question=question,
                answer=answer,
                answer_type=kind,
                question_type=label(row.get("content_type")),
                organ=label(row.get("location")),
                modality=label(row.get("modality")),
                domain=SOURCE,
                split=split,
                source=SOURCE,
                extra={
                    "qid": qid,
                    "img_id": row.get("img_id"),
                    "img_name": str(row["img_name"]),
                    "q_lang": label(row["q_lang"]),
                    "base_type": label(row.get("base_type")),
                    "triple": row.get("triple"),
                },
            )
            yielded += 1
    if other_language:
        logger.info("%s: left out %d rows whose q_lang is not in %s", SOURCE, other_language, list(languages))
    skips.report(yielded)
    check_some_images(SOURCE, yielded, skips, images.describe(), "Fix: unzip the SLAKE imgs/ folder beside train.json.")
