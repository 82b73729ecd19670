"""Converters from public medical VQA / caption datasets to ``Sample`` streams (docs/SPEC.md §1).

Each converter takes the dataset folder in its public layout (docs/DATA_FORMATS.md) and returns an
iterator of ``Sample``: image as encoded bytes, split in train/val/test, answers normalised
with ``normalize_answer``, labels lower-cased, ``domain`` = ``source`` = the dataset name.
Layout problems raise ``ConverterError`` (a ValueError) naming the file, field and fix; rows
whose image is missing are skipped and counted in one logged warning.

    from raymmr.data.making.converters import CONVERTERS
    samples = list(CONVERTERS["vqa-rad"](Path("data_RAD")))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from raymmr.data.making.converters.common import ConverterError
from raymmr.data.making.converters.pmc_vqa import convert_pmc_vqa
from raymmr.data.making.converters.roco import convert_roco
from raymmr.data.making.converters.slake import convert_slake
from raymmr.data.making.converters.vqa_rad import convert_vqa_rad
from raymmr.data.schema import Sample

CONVERTERS: dict[str, Callable[[Path], Iterator[Sample]]] = {
    "roco": convert_roco,
    "pmc-vqa": convert_pmc_vqa,
    "vqa-rad": convert_vqa_rad,
    "slake": convert_slake,
}


def convert(name: str, root: Path | str, **options) -> Iterator[Sample]:
    """``CONVERTERS[name](root, **options)`` with a clear error for an unknown dataset name."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown dataset {name!r}; converters exist for: {', '.join(CONVERTERS)}")
    return CONVERTERS[name](Path(root), **options)


__all__ = [
    "CONVERTERS",
    "ConverterError",
    "convert",
    "convert_pmc_vqa",
    "convert_roco",
    "convert_slake",
    "convert_vqa_rad",
]
