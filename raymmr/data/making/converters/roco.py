"""ROCO (razorx89/roco-dataset) -> caption Samples (docs/DATA_FORMATS.md).

Layout::

    data/{train,validation,test}/{radiology,non-radiology}/captions.txt
        ROCO_00020<TAB> Axial computed tomography ...      (the caption has a leading space)
    data/<split>/<subset>/images/<ROCO_ID>.jpg               (where scripts/fetch.py saves them)

``val`` is accepted for ``validation`` (M3AE renames it); both may exist only if they are the
same folder (a symlink), otherwise the split would be read twice. The non-radiology folders of
some splits ship only ``captions_*_revised.txt``; that file is read when ``captions.txt`` is
absent. Only ``radiology`` is converted by default: the model targets radiology, and the
non-radiology subset (photos, microscopy, charts) is a different image distribution.

Every sample has ``domain = "roco"`` and ``extra = {"roco_id", "subset"}``. Keep ROCO test
out of pre-training whenever ROCO retrieval is evaluated (docs/DATA_FORMATS.md, protocol notes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

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

SOURCE = "roco"
SPLIT_DIRS = {"train": ("train",), "val": ("validation", "val"), "test": ("test",)}
SUBSETS = ("radiology", "non-radiology")
_FIX_IMAGES = "Fix: download the images with scripts/fetch.py of razorx89/roco-dataset (it writes <split>/<subset>/images/<ROCO_ID>.jpg)."


def _data_dir(root: Path) -> Path:
    for base in (root / "data", root):
        if any((base / d).is_dir() for dirs in SPLIT_DIRS.values() for d in dirs):
            return base
    raise ConverterError(
        f"{root}: not a ROCO folder: expected data/{{train,validation,test}}/radiology/captions.txt "
        f"(or those split folders directly in it). Fix: pass the roco-dataset checkout, the folder holding data/."
    )


def _split_dir(data: Path, split: str) -> Path | None:
    found = [data / d for d in SPLIT_DIRS[split] if (data / d).is_dir()]
    if len(found) == 2 and found[0].resolve() != found[1].resolve():
        raise ConverterError(
            f"{data}: both {found[0].name}/ and {found[1].name}/ exist and differ; the validation split "
            f"would be read twice. Fix: keep one of them (or make val a symlink to validation)."
        )
    return found[0] if found else None


def _captions_file(folder: Path) -> Path:
    path = folder / "captions.txt"
    if path.is_file():
        return path
    revised = sorted(folder.glob("captions*_revised.txt"))
    if revised:
        return revised[0]
    raise ConverterError(
        f"{folder}: no captions.txt (nor captions_*_revised.txt). Fix: restore it from razorx89/roco-dataset, "
        f"or pass splits= without {folder.parent.name!r} / subsets= without {folder.name!r}."
    )


def _read_captions(path: Path) -> list[tuple[str, str]]:
    """(ROCO_ID, caption) pairs; a line without the tab separator is a format error."""
    pairs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            roco_id, sep, caption = line.partition("\t")
            if not sep or not roco_id.strip():
                raise ConverterError(
                    f"{path}: line {lineno} has no ROCO_ID<TAB>caption fields: {line[:80]!r}. "
                    f"Fix: use the unmodified captions.txt (tab-separated, one image per line)."
                )
            pairs.append((roco_id.strip(), " ".join(caption.split())))
    return pairs


def convert_roco(
    root: Path | str,
    *,
    subsets: Iterable[str] = ("radiology",),
    splits: Iterable[str] = ("train", "val", "test"),
) -> Iterator[Sample]:
    """Yield ROCO caption samples from ``root`` (the roco-dataset checkout or its ``data/``).

    subsets: "radiology" and/or "non-radiology". splits: any of "train", "val", "test"; a split
    folder that does not exist is skipped with a warning, but at least one must exist. Caption
    files are read now; images are read as the iterator is consumed.
    """
    root = Path(root)
    subsets, splits = tuple(subsets), tuple(splits)
    bad = [s for s in subsets if s not in SUBSETS] + [s for s in splits if s not in SPLIT_DIRS]
    if bad:
        raise ValueError(f"unknown ROCO subset/split {bad}; subsets: {list(SUBSETS)}, splits: {list(SPLIT_DIRS)}")
    data = _data_dir(root)
    tables = []
    for split in splits:
        split_dir = _split_dir(data, split)
        if split_dir is None:
            logger.warning(
                "%s: no %s folder for split %r; converting the others", data, "/".join(SPLIT_DIRS[split]), split
            )
            continue
        for subset in subsets:
            folder = split_dir / subset
            if not folder.is_dir():
                raise ConverterError(
                    f"{split_dir}: no {subset}/ folder. Fix: restore it from razorx89/roco-dataset, or pass subsets= without {subset!r}."
                )
            tables.append((split, subset, folder, _read_captions(_captions_file(folder))))
    if not tables:
        raise ConverterError(
            f"{data}: none of the requested split folders {list(splits)} exists (validation may be named val). Fix: pass the roco-dataset checkout."
        )
    return _samples(tables)


def _samples(tables) -> Iterator[Sample]:
    keys, skips, yielded = KeyMaker(), Skips(SOURCE), 0
    folders = []
    for split, subset, folder, pairs in tables:
        images = ImageStore([folder / "images"])
        folders.append(images.describe())
        for roco_id, caption in pairs:
            if not caption:
                skips.add("rows with an empty caption", f"{roco_id} ({folder})")
                continue
            image = images.read(f"{roco_id}.jpg")
            if image is None:
                skips.add(MISSING_IMAGE, str(folder / "images" / f"{roco_id}.jpg"))
                continue
            yield Sample(
                key=keys(SOURCE, roco_id),
                kind="caption",
                image=image,
                caption=caption,
                domain=SOURCE,
                split=split,
                source=SOURCE,
                extra={"roco_id": roco_id, "subset": subset},
            )
            yielded += 1
    skips.report(yielded)
    check_some_images(SOURCE, yielded, skips, ", ".join(folders), _FIX_IMAGES)
