"""VQA-RAD -> Samples, from either public layout (docs/DATA_FORMATS.md).

MEVF layout (what M3AE, ARL, MUMC and PMC-VQA use)::

    data_RAD/trainset.json     JSON list: qid, image_name, image_organ, answer, answer_type,
    data_RAD/testset.json                 question_type, question, phrase_type
    data_RAD/images/synpicNNNNN.jpg

Official OSF layout::

    VQA_RAD Dataset Public.json     JSON list: qid, phrase_type, image_name, image_organ,
                                    question, question_type, answer, answer_type, ...
    VQA_RAD Image Folder/synpicNNNNN.jpg     (an ``images/`` folder is accepted too)

In the OSF file the test rows are those whose ``phrase_type`` starts with "test"
(``test_freeform`` and the paraphrase spelled ``test_para`` or ``test_paraphrase``); all
others are train. The xlsx column spellings (QID_unique, IMAGE, Q_TYPE, ...) are accepted as
aliases.

Quirks handled: ``answer_type`` "CLOSED " (trailing space); answers stored as JSON ints
(``4``) and in mixed case ("Yes"/"yes"), both normalised; question types that are
combinations ("PRES, ATTRIB") or typos ("ATRIB", "PRSE") are kept as written, lower-cased;
``image_organ`` ABD is spelled out as "abdomen" to match SynthRad and SLAKE.

MEVF's ``valset.json`` (where present) is never read: it is a copy of the test set, and
selecting on it would select on test. Validation is carved from train by the clean protocol.

Every sample has ``domain = "vqa-rad"``: a domain is the source (institution / pipeline);
organ and question type stay separate labels so cross-organ splits remain possible.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from raymmr.data.making.converters.common import (
    ConverterError,
    ImageStore,
    KeyMaker,
    Skips,
    check_some_images,
    label,
    read_json_rows,
    vqa_row,
)
from raymmr.data.schema import Sample

SOURCE = "vqa-rad"
MEVF_FILES = {"trainset.json": "train", "testset.json": "test"}
OSF_FILE = "VQA_RAD Dataset Public.json"
OSF_IMAGE_FOLDERS = ("VQA_RAD Image Folder", "images")
ORGANS = {"abd": "abdomen", "abdomen": "abdomen", "chest": "chest", "head": "head"}
REQUIRED = ("qid", "image_name", "question", "answer", "answer_type")
# OSF JSON keys (canonical) and the xlsx spellings of the same columns, in the readme's order.
OSF_ALIASES = {
    "qid": ("QID_unique",),
    "phrase_type": ("QID_para",),
    "image_name": ("IMAGE",),
    "image_organ": ("IMAGE_organ",),
    "question": ("QUESTION",),
    "question_type": ("Q_TYPE",),
    "answer": ("ANSWER",),
    "answer_type": ("A_TYPE",),
}
_FIX_MEVF = "Fix: use the data_RAD folder of MEVF (trainset.json, testset.json and images/)."
_FIX_OSF = f"Fix: use the unmodified {OSF_FILE!r} from the OSF VQA-RAD release."


def _find_layout(root: Path) -> tuple[str, Path]:
    for base in (root, root / "data_RAD"):
        if any((base / f).is_file() for f in MEVF_FILES):
            return "mevf", base
    for base in (root, root / "VQA_RAD"):
        if (base / OSF_FILE).is_file():
            return "osf", base
    raise ConverterError(
        f"{root}: not a VQA-RAD folder: found neither MEVF's trainset.json/testset.json (in it or "
        f"in data_RAD/) nor the OSF file {OSF_FILE!r}. Fix: pass the folder that holds those files."
    )


def convert_vqa_rad(root: Path | str) -> Iterator[Sample]:
    """Yield VQA-RAD samples (kind "vqa") from ``root``, in either public layout.

    The layout is checked now; rows are read as the iterator is consumed. MEVF wins when a
    folder holds both layouts (it is the one the papers report on).
    """
    root = Path(root)
    layout, base = _find_layout(root)
    if layout == "mevf":
        missing = [f for f in MEVF_FILES if not (base / f).is_file()]
        if missing:
            raise ConverterError(f"{base}: VQA-RAD (MEVF) is missing {', '.join(missing)}. {_FIX_MEVF}")
        files = [(base / f, split) for f, split in MEVF_FILES.items()]
        tables = [(path, split, read_json_rows(path, REQUIRED, _FIX_MEVF)) for path, split in files]
        images = ImageStore([base / "images"])
    else:
        path = base / OSF_FILE
        rows = read_json_rows(path, (*REQUIRED, "phrase_type"), _FIX_OSF, aliases=OSF_ALIASES)
        tables = [(path, None, rows)]
        images = ImageStore([base / f for f in OSF_IMAGE_FOLDERS])
    return _samples(tables, images, layout)


def _samples(tables, images: ImageStore, layout: str) -> Iterator[Sample]:
    keys, skips, yielded = KeyMaker(), Skips(f"{SOURCE} ({layout})"), 0
    try:
        for path, file_split, rows in tables:
            for i, row in enumerate(rows):
                phrase_type = label(row.get("phrase_type"))
                # OSF: one file; test rows are "test_freeform" / "test_para" / "test_paraphrase".
                split = file_split or ("test" if phrase_type.startswith("test") else "train")
                name = str(row["image_name"])
                fields = vqa_row(row, path, i, image_name=name, shown=name, images=images, skips=skips)
                if fields is None:
                    continue
                kind, question, answer, image = fields
                organ = label(row.get("image_organ"))
                yield Sample(
                    key=keys(SOURCE, split, row["qid"]),
                    kind="vqa",
                    image=image,
                    question=question,
                    answer=answer,
                    answer_type=kind,
                    question_type=label(row.get("question_type")),
                    organ=ORGANS.get(organ, organ),
                    domain=SOURCE,
                    split=split,
                    source=SOURCE,
                    extra={"qid": row["qid"], "image_name": str(row["image_name"]), "phrase_type": phrase_type},
                )
                yielded += 1
    finally:
        images.close()
    skips.report(yielded)
    fix = _FIX_MEVF if layout == "mevf" else f"Fix: unzip the OSF image folder next to {OSF_FILE!r}."
    check_some_images(SOURCE, yielded, skips, images.describe(), fix)
