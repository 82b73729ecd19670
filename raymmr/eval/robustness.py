"""The fixed robustness benchmark (docs/SPEC.md §5): perturbed evaluation sets defined here, by the
benchmark, not by the evaluated model's ``perturbation`` config.

Evaluating a model under its own training perturbations measures it in distribution, and a
benchmark that changes with the config under test cannot compare two configs. So every set
below has fixed ops and magnitudes, and every sample draws its own parameters from a seed derived
from its key (not its batch), so a set is the same whatever the batch size, order or subset.

**Seen sets** use all of raymmr's training perturbation families (``raymmr.perturb.IMAGE_OPS``
and ``TEXT_OPS``) at the severities of ``raymmr.perturb``'s tables; a model trained with
perturbations has met them (in distribution for a robust arm):

===========  ================================================  ==========================================
set          images                                            texts (questions and captions)
===========  ================================================  ==========================================
``light``    gamma, blur, downsample, noise, cutout at light   sentence_drop, synonym, delete, shuffle at light
``medium``   the same at medium                                the same at medium
``strong``   the same at strong                                the same at strong
===========  ================================================  ==========================================

(magnitudes: the two tables of ``raymmr.perturb``'s docstring.)

**Unseen sets** use families that training can never draw: they live only in this module, not in
``perturb.IMAGE_OPS`` / ``TEXT_OPS``, which every training config is checked against.

=============  =====================================================================================
set            parameters (each sample draws its own values, uniformly)
=============  =====================================================================================
``jpeg_bias``  images only (texts clean). 1. ``bias_field``: multiply every channel by
               ``exp(a * f)``, ``f`` a random smooth field (``f = sum c_pq cos(pi p y) cos(pi q x)``
               over p, q in {0, 1, 2} but not both 0, ``c_pq ~ N(0, 1)``, y and x pixel centres in
               [0, 1], then scaled to max ``|f|`` = 1), ``a`` in [0.3, 0.6]: up to x0.55 to x1.8,
               an MR coil's intensity inhomogeneity. 2. ``jpeg``: JPEG at quality 10-20
               (integer; grey images encoded as grey), a compressed PACS export.
``typos``      texts only (images clean). ``typos``: each word of 3 or more letters (negations
               never) gets one character edit with probability 0.2, the edit chosen uniformly among
               swapping two neighbouring letters, deleting one, doubling one, or replacing one by a
               neighbouring key on a QWERTY row (case kept).
=============  =====================================================================================

How new they are, honestly: shards store images as JPEG at quality 90, so the ``jpeg`` family is
new in its quality, not in its mechanism; SynthRad's sites darken the corners with a fixed radial
vignette (up to 45%), while the bias field is random, asymmetric and also brightens. Character
typos change the BPE tokenisation of a word, which no training perturbation (they act on whole
words) does.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from raymmr.perturb import _EDGE_PUNCT, _NEGATIONS, IMAGE_OPS, TEXT_OPS, perturb_images, perturb_text

SEEN_SETS = ("light", "medium", "strong")  # named by their raymmr.perturb severity
UNSEEN_SETS = ("jpeg_bias", "typos")
UNSEEN_IMAGE_OPS = ("bias_field", "jpeg")
UNSEEN_TEXT_OPS = ("typos",)

BIAS_FIELD_LOG_GAIN = (0.3, 0.6)  # a: the field's largest |log multiplier|
BIAS_FIELD_MAX_FREQ = 2  # cosine frequencies 0..2 half-periods across the image: smooth
JPEG_QUALITY = (10, 20)  # inclusive
TYPO_WORD_RATE = 0.2
TYPO_MIN_LETTERS = 3  # shorter words ("CT", "is") would become another word or vanish
_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


@dataclass(frozen=True)
class BenchmarkSet:
    """One perturbed evaluation set: which family ("seen" / "unseen") and which ops run on images
    and on texts (seen: at ``severity`` of ``raymmr.perturb``; unseen: this module's ops, in order)."""

    name: str
    family: str
    image_ops: tuple[str, ...]
    text_ops: tuple[str, ...]
    severity: str = ""

    def describe(self) -> str:
        ops = ", ".join(self.image_ops + self.text_ops)
        return f"{ops} at {self.severity}" if self.severity else ops


BENCHMARK_SETS: dict[str, BenchmarkSet] = {
    **{sev: BenchmarkSet(sev, "seen", IMAGE_OPS, TEXT_OPS, sev) for sev in SEEN_SETS},
    "jpeg_bias": BenchmarkSet("jpeg_bias", "unseen", UNSEEN_IMAGE_OPS, ()),
    "typos": BenchmarkSet("typos", "unseen", (), UNSEEN_TEXT_OPS),
}


def benchmark_set(name: str) -> BenchmarkSet:
    if name not in BENCHMARK_SETS:
        raise ValueError(f"unknown robustness benchmark set {name!r}; allowed: {', '.join(BENCHMARK_SETS)}")
    return BENCHMARK_SETS[name]


def sample_seed(key: str, stream: str, seed: int = 0) -> int:
    """A 63-bit seed for one sample and stream ("image" / "text"): a hash, so it is the same in every
    process and Python version (``hash()`` of a string is salted per process)."""
    digest = hashlib.blake2b(f"{seed}/{stream}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# --------------------------------------------------------------------------- unseen image ops


def _rand(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def bias_field(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float [C, H, W] in [0, 1] -> the same times a smooth random multiplicative field (module docstring)."""
    _, h, w = image.shape
    k = BIAS_FIELD_MAX_FREQ + 1
    coef = torch.randn(k, k, generator=generator, dtype=torch.float64)  # [p, q]
    coef[0, 0] = 0.0  # a constant would be a global gain, which is gamma's family, not this one's
    freq = torch.arange(k, dtype=torch.float64)[:, None] * torch.pi
    rows = torch.cos(freq * (torch.arange(h, dtype=torch.float64) + 0.5) / h)  # [k, H]
    cols = torch.cos(freq * (torch.arange(w, dtype=torch.float64) + 0.5) / w)  # [k, W]
    field = torch.einsum("pq,ph,qw->hw", coef, rows, cols)  # [H, W]
    field = field / field.abs().max().clamp(min=1e-12)
    gain = torch.exp(_rand(generator, *BIAS_FIELD_LOG_GAIN) * field).to(image.device, image.dtype)
    return (image * gain).clamp(0, 1)


def jpeg(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """float [C, H, W] in [0, 1] -> the same after a JPEG round trip at a low quality (module docstring)."""
    quality = int(torch.randint(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1, (), generator=generator))
    arr = (image * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()  # [C, H, W]
    grey = bool((arr == arr[:1]).all())  # grey scans broadcast to 3 channels: no chroma to subsample
    im = Image.fromarray(arr[0] if grey else arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L" if grey else "RGB"))
    out = np.broadcast_to(out, arr.shape) if grey else out.transpose(2, 0, 1)  # [C, H, W]
    return torch.from_numpy(np.ascontiguousarray(out)).to(image.device, image.dtype) / 255.0


_IMAGE_FNS = {"bias_field": bias_field, "jpeg": jpeg}


# --------------------------------------------------------------------------- unseen text ops


def _neighbour_key(ch: str, rng: random.Random) -> str:
    for row in _QWERTY_ROWS:
        k = row.find(ch.lower())
        if k >= 0:
            alt = rng.choice([row[j] for j in (k - 1, k + 1) if 0 <= j < len(row)])
            return alt.upper() if ch.isupper() else alt
    return ch + ch  # not a plain Latin letter: double it instead, still one edit


def typo_word(word: str, rng: random.Random) -> str:
    """One character edit of ``word`` (swap, delete, double or neighbouring key); always changes it."""
    edit = rng.randrange(4)
    if edit == 0:
        i = rng.randrange(len(word) - 1)
        if word[i] != word[i + 1]:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        edit = 2  # swapping two equal letters would be no typo at all
    i = rng.randrange(len(word))
    if edit == 1:
        return word[:i] + word[i + 1 :]
    if edit == 2:
        return word[: i + 1] + word[i] + word[i + 1 :]
    return word[:i] + _neighbour_key(word[i], rng) + word[i + 1 :]


def typos(text: str, rng: random.Random) -> str:
    """Character typos in ``text`` (module docstring); punctuation around a word stays in place and
    whitespace is collapsed, as ``raymmr.perturb.perturb_text`` does."""
    out = []
    for word in text.split():
        core = word.strip(_EDGE_PUNCT)
        if (len(core) >= TYPO_MIN_LETTERS and core.isalpha() and core.lower() not in _NEGATIONS
                and rng.random() < TYPO_WORD_RATE):
            start = word.index(core)
            word = word[:start] + typo_word(core, rng) + word[start + len(core) :]
        out.append(word)
    return " ".join(out)


_TEXT_FNS = {"typos": typos}


# --------------------------------------------------------------------------- one sample, one set


def perturb_image(image: torch.Tensor, name: str, seed: int) -> torch.Tensor:
    """uint8 [C, H, W] -> uint8 [C, H, W]: ``image`` under benchmark set ``name``, parameters drawn
    from ``seed`` by a CPU generator, so a GPU run draws the same ones (its pixels may differ by a
    rounding step where float arithmetic does)."""
    spec = benchmark_set(name)
    if not spec.image_ops:
        return image
    g = torch.Generator().manual_seed(seed)
    x = image.float() / 255.0
    if spec.family == "seen":
        x = perturb_images(x[None], spec.severity, list(spec.image_ops), g)[0]
    else:
        for op in spec.image_ops:
            x = _IMAGE_FNS[op](x, g)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


def perturb_one_text(text: str, name: str, seed: int) -> str:
    """``text`` under benchmark set ``name``, its random choices drawn from ``seed``."""
    spec = benchmark_set(name)
    if not spec.text_ops:
        return text
    rng = random.Random(seed)
    if spec.family == "seen":
        return perturb_text(text, spec.severity, list(spec.text_ops), rng)
    for op in spec.text_ops:
        text = _TEXT_FNS[op](text, rng)
    return text


@contextlib.contextmanager
def _one_thread():
    """Run per-sample ops on one CPU thread. One image's ops are far too small to split across
    threads, and on a busy machine every tiny op's intra-op barrier waits for a descheduled thread:
    2026-12-05, 2 cores under load, 49 ms a sample on 2 threads against 1.2 ms on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class BenchmarkPerturbation:
    """Benchmark set ``name`` over one list of samples, in the interface ``raymmr.serve.Predictor``
    takes (``images(x, offset)``, ``texts(texts, offset)``): item ``offset + b`` of a batch is the
    sample with key ``keys[offset + b]``, perturbed from that key's seed alone."""

    def __init__(self, name: str, keys: list[str], seed: int = 0):
        self.spec = benchmark_set(name)
        self.name, self.keys, self.seed = name, list(keys), seed

    def images(self, images: torch.Tensor, offset: int) -> torch.Tensor:
        """uint8 [B, C, H, W] -> uint8 [B, C, H, W]."""
        if not self.spec.image_ops:
            return images
        with _one_thread():
            return torch.stack([perturb_image(im, self.name, sample_seed(self.keys[offset + b], "image", self.seed))
                                for b, im in enumerate(images)])  # fmt: skip

    def texts(self, texts: list[str], offset: int) -> list[str]:
        return [perturb_one_text(t, self.name, sample_seed(self.keys[offset + b], "text", self.seed))
                for b, t in enumerate(texts)]  # fmt: skip


def benchmark_perturbation(name: str, samples, seed: int = 0) -> BenchmarkPerturbation | None:
    """The perturbation of set ``name`` for ``samples`` (anything with a ``key``), None for "none"
    (clean). Samples without a key are seeded by their position."""
    if name == "none":
        return None
    return BenchmarkPerturbation(name, [getattr(s, "key", "") or f"#{i}" for i, s in enumerate(samples)], seed)
