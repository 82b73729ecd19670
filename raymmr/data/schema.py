"""The sample schema every shard follows (docs/SPEC.md §1).

A shard member pair is ``{key}.jpg|jpeg|png|webp`` (image, pre-resized) + ``{key}.json`` (this record).
Readers also accept a bare ``{key}.txt`` caption. Only these extensions are ever decoded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SCHEMA_VERSION = 1
KINDS = ("caption", "vqa")
ANSWER_TYPES = ("open", "closed")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class Sample:
    """One image with its text. ``image`` is a PIL image or encoded bytes until written."""

    key: str
    kind: str  # "caption" | "vqa"
    image: object = None
    caption: str = ""  # caption samples
    question: str = ""  # vqa samples
    answer: str = ""  # vqa samples, normalised (see raymmr.data.answers.normalize_answer)
    answer_type: str = ""  # "open" | "closed" | "" (unknown)
    question_type: str = ""  # e.g. "presence", "organ", "modality"; "" when unknown
    organ: str = ""  # "" when unknown
    modality: str = ""
    domain: str = ""  # source / hospital / scanner
    split: str = "train"
    source: str = ""  # synthrad | roco | pmc-vqa | vqa-rad | slake
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The JSON record stored beside the image (everything but the image)."""
        d = dataclasses.asdict(self)
        d.pop("image")
        d["schema_version"] = SCHEMA_VERSION
        return d

    @property
    def text(self) -> str:
        return self.caption if self.kind == "caption" else self.question
