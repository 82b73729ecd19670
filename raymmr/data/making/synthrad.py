"""SynthRad: a procedural radiology benchmark with ground truth (docs/SPEC.md §1).

Real medical data cannot be downloaded here and tests need known answers, so raymmr ships a
generator. Each *image* shows one organ (head / chest / abdomen) in one modality (CT / MRI /
X-ray), with 0-3 lesions on one side, all of one size class. It yields one ``caption`` sample
(a report) and 3-4 ``vqa`` samples (distinct keys, same image):

  question_type  open answers                 closed form (yes/no, balanced by construction)
  presence       -                            "Is there a lesion?"
  organ          head / chest / abdomen       "Is this an image of the chest?"
  modality       ct / mri / x-ray             "Is this an MRI?"
  side           left / right                 "Is the lesion on the left side?"
  count          1 / 2 / 3                    "Are there 2 lesions?"
  size           small / large                "Is the lesion large?"

``presence`` is asked of every image (so its answer is 50/50); side/count/size only when a
lesion exists. Sides follow the radiological convention: the patient's left is on the image's
right.

*Domains* behave like hospitals: each has an image style (noise, blur, gamma/contrast,
down-up resolution, vignetting) and a reporting style (templates, abbreviations, word order).
``test_domain`` is held out of train/val/pretrain and appears only in test. ``val_domain`` (optional,
-1 for none) is held out of train/pretrain/test and appears only in val: a shifted domain to make
choices on that is not the test domain (DomainBed's held-out validation domain). Test holds every
domain but the validation one, val the training domains and its own.

The ``pretrain`` split is the pre-training corpus, from images of its own (a caption and one of
the image's questions each, ``PRETRAIN_QUESTIONS``): pre-training reads it,
fine-tuning and evaluation the downstream train/val/test split (CMDPI pre-trains on captions and
auto-generated VQA, never on the downstream VQA data).

Everything is deterministic given ``seed``: image ``i`` of a split draws from its own RNG
seeded by (seed, split, i), so generation order and chunking never change the data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from raymmr.config import check_synthrad_domains
from raymmr.data.schema import Sample

ORGANS = ("head", "chest", "abdomen")
MODALITIES = ("ct", "mri", "x-ray")
SIDES = ("left", "right")
SIZES = ("small", "large")
APPEARANCES = ("solid", "cystic")  # caption-only detail: more distinct reports for retrieval
QUESTION_TYPES = ("presence", "organ", "modality", "side", "count", "size")
# "pretrain": the pre-training corpus (captions and VQA of images of its own, like ROCO + PMC-VQA
# for CMDPI); train/val/test: the downstream VQA set. No image is in both (each split draws from
# its own random stream).
SPLITS = ("train", "val", "test", "pretrain")
GENERATOR_VERSION = 4  # bump when the output changes; it is part of the shard fingerprint
EXTRA_QUESTIONS = 3  # besides presence, per image with a lesion (2 without: organ, modality)
# Questions kept per image of the pre-training corpus, drawn from the image's 3-4: CMDPI's corpus is
# a caption set beside auto-generated VQA of about as many samples (ROCO + PMC-VQA), and the
# contrastive terms learn from the captions of a batch only (all 3-4 questions made captions 22%
# of a batch: ~7 per batch of 32, too few negatives for con_inter to leave chance at the tiny size).
PRETRAIN_QUESTIONS = 1

# Lesion radius in normalised coordinates (the image spans [-1, 1]): at 64 px a small lesion is
# ~6 px across, a large one ~10 px. Version 2 drew 5 and 9 px: after the blurriest sites' blur
# and down-sampling a small lesion was a faint smudge inside one 8-px patch, and a tiny image tower
# trained on the labels directly (400 steps of 32) found it in 65% of images and its side in 57%;
# at these sizes 76% and 82% (2026-12-03).
_RADIUS = {"small": 0.1, "large": 0.16}


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Findings:
    organ: str
    modality: str
    lesion: bool
    side: str = ""  # "" when no lesion
    size: str = ""
    count: int = 0
    appearance: str = ""


def sample_findings(rng: np.random.Generator) -> Findings:
    organ = ORGANS[rng.integers(3)]
    modality = MODALITIES[rng.integers(3)]
    if rng.random() < 0.5:
        return Findings(organ, modality, False)
    return Findings(
        organ,
        modality,
        True,
        side=SIDES[rng.integers(2)],
        size=SIZES[rng.integers(2)],
        count=int(rng.integers(1, 4)),
        appearance=APPEARANCES[rng.integers(2)],
    )


# --------------------------------------------------------------------------- domain styles


@dataclass(frozen=True)
class ImageStyle:
    """How a site's scanners render: blur in pixels at 64 px (scaled with the image size)."""

    noise: float = 0.02
    blur: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0
    resolution: float = 1.0  # down-up sampling factor
    vignette: float = 0.0


@dataclass(frozen=True)
class TextStyle:
    """A site's reporting habits: words for each concept, one caption template, question forms."""

    words: dict  # concept -> word, e.g. "mri" -> "MR", "lesion" -> "nodule"
    caption: str  # template with {modality} {organ} {findings}
    finding: str  # template with {count} {size} {lesion} {side} {region} {appearance}
    normal: str  # finding text without lesion
    count_style: str  # "word" | "digit" | "times"
    questions: dict  # (question_type, "open"|"closed") -> list of templates
    upper: bool = False


@dataclass(frozen=True)
class DomainStyle:
    name: str
    image: ImageStyle
    text: TextStyle


# One column per hand-written site (0-3): the words its reports use for each concept.
_WORDS = {
    "ct": ["CT", "CT", "computed tomography", "CT"],
    "mri": ["MRI", "MR", "magnetic resonance imaging", "MR"],
    "x-ray": ["X-ray", "XR", "radiograph", "plain film"],
    "head": ["head", "head", "brain", "cranium"],
    "chest": ["chest", "chest", "thorax", "thorax"],
    "abdomen": ["abdomen", "abd", "abdomen", "abd"],
    "lesion": ["lesion", "lesion", "mass", "nodule"],
    "left": ["left", "L", "left-sided", "lt"],
    "right": ["right", "R", "right-sided", "rt"],
    "small": ["small", "sm", "small", "subcentimetre"],
    "large": ["large", "lg", "large", "bulky"],
    "solid": ["solid", "solid", "homogeneous", "dense"],
    "cystic": ["cystic", "cystic", "rim-enhancing", "ring-enhancing"],
    "region:head": ["hemisphere", "hemisphere", "cerebral hemisphere", "hemicranium"],
    "region:chest": ["lung", "lung", "hemithorax", "lung field"],
    "region:abdomen": ["abdomen", "abdomen", "upper quadrant", "flank"],
}
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}

# Question forms per (type, form); each site uses one column. Site 3 (held out by default)
# recombines the other sites' words in new orders and abbreviations, the shift that text
# perturbations (synonym swap, deletion, shuffle) prepare a model for; a robust model can
# answer it, a brittle one drops. {organ} {modality} {side} {n} {size} {lesion} fill in.
_QUESTIONS = {
    ("presence", "closed"): [
        ["Is there a {lesion} in this image?", "Is any {lesion} present?"],
        ["{Lesion} present?", "Any {lesion} seen?"],
        ["Does the study show a {lesion}?", "Can a {lesion} be identified?"],
        ["{Lesion} present y/n?", "Is a {lesion} seen?"],
    ],
    ("organ", "open"): [
        ["Which organ is shown in this image?", "What body part is imaged?"],
        ["Organ?", "Body region imaged?"],
        ["What region of the body does this study cover?", "Which anatomy is examined?"],
        ["Organ imaged?", "Which organ is imaged?"],
    ],
    ("organ", "closed"): [
        ["Is this an image of the {organ}?"],
        ["{organ} study?"],
        ["Does this study cover the {organ}?"],
        ["{organ} imaged?"],
    ],
    ("modality", "open"): [
        ["What imaging modality was used?", "Which modality is this image?"],
        ["Modality?", "Scan type?"],
        ["How was this image acquired?", "What kind of scan is this?"],
        ["Modality used?", "Which modality was used?"],
    ],
    ("modality", "closed"): [
        ["Is this a {modality} image?"],
        ["{modality} study?"],
        ["Was this image acquired with {modality}?"],
        ["{modality} used?"],
    ],
    ("side", "open"): [
        ["On which side is the {lesion}?", "Which side is the {lesion} located on?"],
        ["Side of {lesion}?", "{Lesion} side?"],
        ["Where is the {lesion}, left or right?", "Which side does the {lesion} involve?"],
        ["{Lesion} on which side?", "Which side, {lesion}?"],
    ],
    ("side", "closed"): [
        ["Is the {lesion} on the {side} side?"],
        ["{side} side {lesion}?"],
        ["Does the {lesion} involve the {side} side?"],
        ["{Lesion} on the {side}?"],
    ],
    ("count", "open"): [
        ["How many {lesions} are there?", "What is the number of {lesions}?"],
        ["Number of {lesions}?", "{Lesion} count?"],
        ["How many {lesions} can be counted?", "How many {lesions} are visible?"],
        ["Number of {lesions} seen?", "How many {lesions}?"],
    ],
    ("count", "closed"): [
        ["Is the number of {lesions} {n}?"],
        ["{n} {lesions_n}?"],
        ["Does the study show {n} {lesions_n}?"],
        ["{n} {lesions_n} seen?"],
    ],
    ("size", "open"): [
        ["What size is the {lesion}?", "How large is the {lesion}?"],
        ["{Lesion} size?", "Size?"],
        ["Is the {lesion} small or large?", "How big does the {lesion} appear?"],
        ["Size of the {lesion}?", "{Lesion} small or large?"],
    ],
    ("size", "closed"): [
        ["Is the {lesion} {size}?"],
        ["{size} {lesion}?"],
        ["Does the {lesion} appear {size}?"],
        ["{Lesion} {size}?"],
    ],
}

# Four hand-written sites; index = column of _WORDS / _QUESTIONS. Site 3 (the default held-out
# one) is the hardest: abbreviations, strong gamma, vignetting and low resolution.
_TEXT_TEMPLATES = [
    ("{Modality} image of the {organ}. {findings}", "There {be} {count} {size} {appearance} {lesions} in the {side} {region}.",
     "No focal lesion is seen.", "word"),
    ("{MODALITY} {ORGAN}: {findings}", "{count} {size} {lesions}, {side} {region}, {appearance}.", "no focal lesion.", "digit"),
    ("Findings: {findings} Technique: {modality} of the {organ}.",
     "{count} {appearance} {size} {lesions} {be} seen in the {side} {region}.", "no abnormality is identified.", "word"),
    ("Impression: {organ} {modality} w/ {findings}", "{size} {appearance} {lesions} {count} {side} {region}.", "nil focal.", "times"),
]
_IMAGE_STYLES = [
    ImageStyle(noise=0.02, blur=0.0, gamma=1.0, contrast=1.0),
    ImageStyle(noise=0.07, blur=0.4, gamma=0.85, contrast=1.1, brightness=0.03, vignette=0.1),
    ImageStyle(noise=0.03, blur=0.9, gamma=1.25, contrast=0.85, resolution=0.6),
    ImageStyle(noise=0.05, blur=0.5, gamma=0.7, contrast=1.2, brightness=-0.04, resolution=0.7, vignette=0.45),
]


def domain_name(index: int) -> str:
    return f"site{index}"


def domain_styles(num_domains: int) -> list[DomainStyle]:
    """The ``num_domains`` site styles; sites >= 4 mix the hand-written ones' parts at random."""
    styles = []
    for d in range(num_domains):
        if d < len(_TEXT_TEMPLATES):
            col = [d] * 16
            image = _IMAGE_STYLES[d]
            caption, finding, normal, count_style = _TEXT_TEMPLATES[d]
        else:  # fixed by the index alone, so a site looks the same whatever the seed
            r = random.Random(1000 + d)
            col = [r.randrange(4) for _ in range(16)]
            caption, _, _, _ = _TEXT_TEMPLATES[r.randrange(4)]
            _, finding, normal, count_style = _TEXT_TEMPLATES[r.randrange(4)]
            image = ImageStyle(
                noise=r.uniform(0.01, 0.07), blur=r.uniform(0.0, 0.9), gamma=r.uniform(0.75, 1.3),
                contrast=r.uniform(0.85, 1.2), brightness=r.uniform(-0.04, 0.04),
                resolution=r.choice([1.0, 0.8, 0.6]), vignette=r.choice([0.0, 0.15, 0.35]),
            )
        words = {c: v[col[i] % len(v)] for i, (c, v) in enumerate(_WORDS.items())}
        questions = {k: v[col[i % 16] % 4] for i, (k, v) in enumerate(_QUESTIONS.items())}
        text = TextStyle(words, caption, finding, normal, count_style, questions, upper=(d % 4 == 1))
        styles.append(DomainStyle(domain_name(d), image, text))
    return styles


# --------------------------------------------------------------------------- text


def _count_text(n: int, style: str) -> str:
    return {"word": _NUMBER_WORDS[n], "digit": str(n), "times": f"x{n}"}[style]


def _plural(word: str) -> str:
    if word.endswith("y"):
        return word[:-1] + "ies"
    return word + ("es" if word.endswith("s") else "s")


def caption_for(f: Findings, style: TextStyle) -> str:
    """A one- or two-sentence report of ``f`` in the site's reporting style."""
    w = style.words
    if f.lesion:
        lesion = w["lesion"]
        findings = style.finding.format(
            be="is" if f.count == 1 else "are",
            count=_count_text(f.count, style.count_style),
            size=w[f.size],
            lesions=lesion if f.count == 1 else _plural(lesion),
            side=w[f.side],
            region=w[f"region:{f.organ}"],
            appearance=w[f.appearance],
        )
    else:
        findings = style.normal
    text = style.caption.format(
        Modality=w[f.modality][0].upper() + w[f.modality][1:], modality=w[f.modality], MODALITY=w[f.modality].upper(),
        organ=w[f.organ], ORGAN=w[f.organ].upper(), findings=findings,
    )
    text = text[0].upper() + text[1:]
    return text.upper() if style.upper else text


def questions_for(f: Findings, style: TextStyle, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """(question, answer, answer_type, question_type) for image ``f``: presence + 2-3 others.

    Closed questions about a value ask the true value with probability 1/2 and a random other
    value otherwise, so "yes" and "no" are equally likely for every question text's slot.
    """
    kinds = ["organ", "modality"] + (["side", "count", "size"] if f.lesion else [])
    chosen = ["presence"] + rng.sample(kinds, min(EXTRA_QUESTIONS, len(kinds)))
    w = style.words
    out = []
    for qtype in chosen:
        form = "closed" if qtype == "presence" or rng.random() < 0.5 else "open"
        truth = {"organ": f.organ, "modality": f.modality, "side": f.side, "count": str(f.count), "size": f.size}.get(qtype)
        if qtype == "presence":
            answer = "yes" if f.lesion else "no"
            asked = ""
        elif form == "open":
            answer, asked = truth, ""
        else:
            values = {"organ": ORGANS, "modality": MODALITIES, "side": SIDES, "count": ("1", "2", "3"), "size": SIZES}[qtype]
            asked = truth if rng.random() < 0.5 else rng.choice([v for v in values if v != truth])
            answer = "yes" if asked == truth else "no"
        lesion = w["lesion"]
        template = rng.choice(style.questions[(qtype, form)])
        q = template.format(
            lesion=lesion, Lesion=lesion[0].upper() + lesion[1:], lesions=_plural(lesion),
            lesions_n=lesion if asked == "1" else _plural(lesion),
            organ=w.get(asked, asked) if qtype == "organ" else "",
            modality=w.get(asked, asked) if qtype == "modality" else "",
            side=w.get(asked, asked) if qtype == "side" else "",
            size=w.get(asked, asked) if qtype == "size" else "",
            n=asked if qtype == "count" else "",
        )
        out.append((q[0].upper() + q[1:], answer, form, qtype))
    return out


# --------------------------------------------------------------------------- images


class _Canvas:
    """Soft-edged shapes painted on a float image in normalised coordinates [-1, 1]."""

    def __init__(self, size: int, background: float):
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        self.yy, self.xx = np.meshgrid(c, c, indexing="ij")
        self.edge = 2.0 / size  # one pixel of anti-aliasing, whatever the resolution
        self.img = np.full((size, size), background, np.float32)

    def ellipse(self, cy, cx, ry, rx, angle=0.0) -> np.ndarray:
        ca, sa = math.cos(angle), math.sin(angle)
        dx, dy = self.xx - cx, self.yy - cy
        u, v = (dx * ca + dy * sa) / rx, (-dx * sa + dy * ca) / ry
        dist = (np.sqrt(u * u + v * v) - 1.0) * min(rx, ry)  # ~signed distance in image units
        return np.clip(0.5 - dist / self.edge, 0.0, 1.0)

    def paint(self, mask: np.ndarray, value: float) -> None:
        self.img += mask * (value - self.img)


# Intensity of each tissue per modality: CT (bone bright, CSF dark, enhancing lesions), MRI
# T2-like (fluid and fat bright, cortical bone dark, flow voids), X-ray (a projection: bone
# bright, lungs grey, soft tissue barely separable).
_PALETTE = {
    "ct": dict(bg=0.0, body=0.42, fat=0.30, bone=0.95, air=0.04, fluid=0.18, organ=0.55, heart=0.50, lesion=0.80),
    "mri": dict(bg=0.02, body=0.35, fat=0.75, bone=0.08, air=0.03, fluid=0.95, organ=0.22, heart=0.12, lesion=0.90),
    "x-ray": dict(bg=0.03, body=0.45, fat=0.42, bone=0.90, air=0.20, fluid=0.45, organ=0.50, heart=0.62, lesion=0.85),
}


def _anatomy(c: _Canvas, organ: str, pal: dict, rng: np.random.Generator) -> list[tuple]:
    """Paint the organ's silhouette; return the lesion regions per side as ellipses."""
    s = 1.0 + rng.uniform(-0.08, 0.08)
    oy, ox = rng.uniform(-0.05, 0.05, size=2)
    tilt = rng.uniform(-0.12, 0.12)
    if organ == "head":
        c.paint(c.ellipse(oy, ox, 0.86 * s, 0.72 * s, tilt), pal["bone"])  # skull
        c.paint(c.ellipse(oy, ox, 0.78 * s, 0.64 * s, tilt), pal["body"])  # brain
        for sx in (-1, 1):  # lateral ventricles
            c.paint(c.ellipse(oy - 0.05, ox + sx * 0.1 * s, 0.22 * s, 0.06 * s, tilt + sx * 0.3), pal["fluid"])
        hemi = dict(ry=0.62 * s, rx=0.24 * s)
        return [(oy, ox - 0.34 * s, hemi, tilt), (oy, ox + 0.34 * s, hemi, tilt)]  # image-left, image-right
    body_rx, body_ry = (0.92 * s, 0.62 * s) if organ == "chest" else (0.9 * s, 0.7 * s)
    c.paint(c.ellipse(oy, ox, body_ry, body_rx, tilt), pal["fat"])
    c.paint(c.ellipse(oy, ox, body_ry - 0.06, body_rx - 0.06, tilt), pal["body"])
    if organ == "chest":
        lungs = []
        for sx in (-1, 1):
            cy, cx = oy - 0.02, ox + sx * 0.42 * s
            c.paint(c.ellipse(cy, cx, 0.5 * s, 0.3 * s, tilt + sx * 0.08), pal["air"])
            lungs.append((cy, cx, dict(ry=0.44 * s, rx=0.24 * s), tilt + sx * 0.08))
        c.paint(c.ellipse(oy + 0.08, ox + 0.1 * s, 0.26 * s, 0.22 * s, tilt), pal["heart"])  # heart leans to patient left
        c.paint(c.ellipse(oy + 0.5 * s, ox, 0.09 * s, 0.09 * s), pal["bone"])  # vertebra
        return lungs
    c.paint(c.ellipse(oy - 0.12, ox - 0.38 * s, 0.32 * s, 0.34 * s, tilt), pal["organ"])  # liver: patient right
    for sx in (-1, 1):  # kidneys
        c.paint(c.ellipse(oy + 0.28 * s, ox + sx * 0.4 * s, 0.16 * s, 0.09 * s, sx * 0.4), pal["organ"])
    c.paint(c.ellipse(oy + 0.5 * s, ox, 0.1 * s, 0.1 * s), pal["bone"])
    bowel = 0.5 * (pal["body"] + pal["fluid"])
    for _ in range(6):  # bowel loops: elongated texture (never round) that lesions must stand out against
        cy, cx = oy + rng.uniform(-0.2, 0.3), ox + rng.uniform(-0.3, 0.5)
        c.paint(c.ellipse(cy, cx, 0.03 * s, 0.12 * s, rng.uniform(0, 3)), bowel)
    half = dict(ry=0.42 * s, rx=0.3 * s)
    return [(oy - 0.05, ox - 0.42 * s, half, tilt), (oy - 0.05, ox + 0.42 * s, half, tilt)]


def _place_lesions(f: Findings, region: tuple, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """Non-overlapping lesion centres inside the side's region (rejection sampling)."""
    cy, cx, axes, _ = region
    out: list[tuple[float, float, float]] = []
    for _ in range(400):
        if len(out) == f.count:
            break
        r = _RADIUS[f.size] * rng.uniform(0.85, 1.15)
        # centre inside the region shrunk by half a radius: lesions may touch the organ's edge
        ang, rad = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 1))
        y = cy + rad * math.sin(ang) * max(axes["ry"] - 0.5 * r, 0.02)
        x = cx + rad * math.cos(ang) * max(axes["rx"] - 0.5 * r, 0.02)
        if all(math.hypot(y - y2, x - x2) > r + r2 + 0.03 for y2, x2, r2 in out):
            out.append((y, x, r))
    if len(out) < f.count:  # rare (~2%): never drop a lesion, stack all of them down the region's axis
        r = _RADIUS[f.size]
        out = [(cy - axes["ry"] + r + k * 2.2 * r, cx, r) for k in range(f.count)]
    return out


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma < 0.2:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    for axis in (0, 1):
        pad = [(radius, radius) if a == axis else (0, 0) for a in (0, 1)]
        p = np.pad(img, pad, mode="reflect")
        n = img.shape[axis]
        img = sum(w * (p[i : i + n] if axis == 0 else p[:, i : i + n]) for i, w in enumerate(k))
    return img


def render_image(f: Findings, size: int, rng: np.random.Generator) -> np.ndarray:
    """The clean (site-independent) image of ``f``: float32 [size, size] in [0, 1]."""
    pal = _PALETTE[f.modality]
    c = _Canvas(size, pal["bg"])
    regions = _anatomy(c, f.organ, pal, rng)
    px = size / 64.0
    if f.modality == "x-ray":  # a projection: anatomy is smooth, ribs overlay the chest
        c.img = _gaussian_blur(c.img, 1.2 * px)
        if f.organ == "chest":
            ribs = 0.5 + 0.5 * np.cos(c.yy * 22 + 0.6 * np.abs(c.xx) * 10)
            c.img += 0.10 * ribs * (c.img > pal["air"] - 0.05) * (np.abs(c.xx) > 0.12)
    if f.lesion:
        region = regions[1 if f.side == "left" else 0]  # radiological convention
        for y, x, r in _place_lesions(f, region, rng):
            c.paint(c.ellipse(y, x, r, r * rng.uniform(0.85, 1.15), rng.uniform(0, 3)), pal["lesion"])
            if f.appearance == "cystic":  # a darker core inside a bright rim
                c.paint(c.ellipse(y, x, 0.55 * r, 0.55 * r), 0.5 * (pal["lesion"] + pal["fluid"]) * 0.6)
    img = c.img
    if f.modality == "mri":  # coil bias field: a smooth intensity ramp across the image
        a = rng.uniform(0, 2 * math.pi)
        img = img * (1.0 + 0.2 * (c.xx * math.cos(a) + c.yy * math.sin(a)))
    elif f.modality == "ct":  # quantum mottle
        img = img + rng.normal(0, 0.015, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def apply_image_style(img: np.ndarray, style: ImageStyle, rng: np.random.Generator) -> np.ndarray:
    """A site's acquisition chain on a clean float image -> uint8 [S, S]; parameters jitter ±15%."""
    size = img.shape[0]
    j = lambda v: v * rng.uniform(0.85, 1.15)  # noqa: E731 - per-image jitter of one parameter
    if style.resolution < 1.0:
        low = min(size, max(8, int(round(size * j(style.resolution)))))
        pil = Image.fromarray(img).resize((low, low), Image.BILINEAR)
        img = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.float32)
    img = _gaussian_blur(img, j(style.blur) * size / 64.0)
    img = np.clip((img - 0.5) * j(style.contrast) + 0.5 + style.brightness, 0.0, 1.0) ** j(style.gamma)
    if style.vignette > 0:
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        img = img * (1.0 - j(style.vignette) * 0.5 * (c[:, None] ** 2 + c[None, :] ** 2))
    img = img + rng.normal(0.0, j(style.noise), img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- samples


def split_domains(split: str, num_domains: int, test_domain: int, val_domain: int = -1) -> list[int]:
    """Sites a split draws from: test every site but ``val_domain``, val every site but
    ``test_domain``, train and pretrain neither of the two."""
    held_out = {"test": {val_domain}, "val": {test_domain}}.get(split, {test_domain, val_domain})
    return [d for d in range(num_domains) if d not in held_out]


def generate_image_samples(
    split: str, index: int, *, image_size: int, num_domains: int, test_domain: int, seed: int,
    styles: list[DomainStyle] | None = None, val_domain: int = -1,
) -> list[Sample]:
    """The caption sample and the 3-4 VQA samples (``PRETRAIN_QUESTIONS`` in ``pretrain``) of
    image ``index`` of ``split``.

    They share one PIL image (mode "L", image_size²). Answers are normalised with
    ``raymmr.data.answers.normalize_answer`` so they match what converters produce.
    """
    from raymmr.data.answers import normalize_answer  # lazy: data modules import cheaply

    styles = styles or domain_styles(num_domains)
    rng = np.random.default_rng([seed, SPLITS.index(split) if split in SPLITS else 99, index])
    text_rng = random.Random(int(rng.integers(2**63)))
    domains = split_domains(split, num_domains, test_domain, val_domain)
    style = styles[domains[index % len(domains)]]
    f = sample_findings(rng)
    pixels = apply_image_style(render_image(f, image_size, rng), style.image, rng)
    image = Image.fromarray(pixels)
    base = f"synthrad-{split}-{index:07d}"
    common = dict(image=image, organ=f.organ, modality=f.modality, domain=style.name, split=split, source="synthrad")
    extra = {"image_id": base, "lesion": f.lesion, "side": f.side, "size": f.size, "count": f.count,
             "appearance": f.appearance}
    out = [Sample(key=f"{base}-cap", kind="caption", caption=caption_for(f, style.text), extra=extra, **common)]
    questions = questions_for(f, style.text, text_rng)
    if split == "pretrain":
        questions = text_rng.sample(questions, PRETRAIN_QUESTIONS)
    for j, (q, a, form, qtype) in enumerate(questions):
        out.append(Sample(key=f"{base}-q{j}", kind="vqa", question=q, answer=normalize_answer(a), answer_type=form,
                          question_type=qtype, extra=extra, **common))
    return out


def generate_split(
    split: str, num_images: int, *, image_size: int, num_domains: int, test_domain: int, seed: int, start: int = 0,
    val_domain: int = -1,
) -> Iterator[Sample]:
    """All samples of images ``start .. num_images-1`` of ``split``, image by image."""
    check_synthrad_domains(num_domains, test_domain, val_domain)
    styles = domain_styles(num_domains)
    for i in range(start, num_images):
        yield from generate_image_samples(
            split, i, image_size=image_size, num_domains=num_domains, test_domain=test_domain, seed=seed, styles=styles,
            val_domain=val_domain,
        )



def split_sizes(data_cfg) -> dict[str, int]:
    """Images per split from the config (``data.synthrad_{train,val,test,pretrain}`` count images)."""
    return {"train": data_cfg.synthrad_train, "val": data_cfg.synthrad_val, "test": data_cfg.synthrad_test,
            "pretrain": data_cfg.synthrad_pretrain}


def generate_splits(data_cfg) -> dict[str, Iterator[Sample]]:
    """Lazy sample streams for every split as configured by ``data_cfg`` (a DataConfig)."""
    kw = dict(image_size=data_cfg.image_size, num_domains=data_cfg.synthrad_domains,
              test_domain=data_cfg.synthrad_test_domain, val_domain=data_cfg.synthrad_val_domain, seed=data_cfg.seed)
    return {split: generate_split(split, n, **kw) for split, n in split_sizes(data_cfg).items()}

