"""Image and text perturbations of graded severity (docs/SPEC.md §3, Robust-MMR).

Pure functions with no model knowledge: the model task perturbs image batches on the GPU,
the data loader perturbs texts per sample, and SynthRad domain styles may reuse both.

Severity sets parameter *magnitudes*; the ``ops`` list selects which perturbations run. The
magnitude ranges of consecutive severities do not overlap, so a stronger severity always
changes an input more (tests measure this). Ops always run in one canonical order, whatever
the order of ``ops``: images follow the acquisition chain (contrast curve -> optical blur ->
resolution loss -> sensor noise -> occlusion); texts go from coarse to fine (sentences ->
phrases -> words -> order), because synonym phrases must be matched before words are deleted
or moved.

Image parameters (each sample draws its own value uniformly in the range; sign random where
shown as ±):

==========  ==========================================  =============  =============  =============
op          parameter                                   light          medium         strong
==========  ==========================================  =============  =============  =============
gamma       ±log(gamma) ; ±log(contrast) about the mean  0.05-0.15      0.15-0.35      0.35-0.60
blur        Gaussian sigma in pixels                    0.5-1.0        1.0-1.8        1.8-3.0
downsample  down-up factor (antialiased, bilinear up)    1.3-1.8        1.8-2.6        2.6-4.0
noise       Gaussian std (intensity in [0, 1])          0.01-0.03      0.03-0.06      0.06-0.12
cutout      square side as a fraction of image side     0.10-0.16      0.16-0.25      0.25-0.35
==========  ==========================================  =============  =============  =============

Blur sigma is in pixels of the image as given (not scaled with its size: at the 64 px of the
tiny preset a size-relative sigma would make "light" a no-op); ``downsample`` is the
resolution-relative op. Cutout fills with the image's channel means so that it adds no global
intensity shift.

Text parameters:

=============  =========================================  =====  ======  ======
op             parameter                                  light  medium  strong
=============  =========================================  =====  ======  ======
sentence_drop  probability a sentence is dropped          0.10   0.20    0.35
synonym        probability a table term is swapped        0.25   0.50    0.80
delete         probability a word is deleted              0.05   0.10    0.20
shuffle        window k: word i sorts by i + U(0, k)      1.5    2.25    3.0
=============  =========================================  =====  ======  ======

The shuffle is the bounded local permutation of Lample et al. (2018, "Unsupervised machine
translation using monolingual corpora only"): a word never moves k or more places.
Negation words ("no", "not", "without", ...) are never deleted: losing one flips a finding,
which would turn a perturbation into a wrong label.
"""

from __future__ import annotations

import random
import re

import torch

SEVERITIES = ("none", "light", "medium", "strong")
IMAGE_OPS = ("gamma", "blur", "downsample", "noise", "cutout")  # canonical application order
TEXT_OPS = ("sentence_drop", "synonym", "delete", "shuffle")  # canonical application order

# op -> severity -> (low, high) magnitude; consecutive severities share only an end point.
_IMAGE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "gamma": {"light": (0.05, 0.15), "medium": (0.15, 0.35), "strong": (0.35, 0.60)},
    "blur": {"light": (0.5, 1.0), "medium": (1.0, 1.8), "strong": (1.8, 3.0)},
    "downsample": {"light": (1.3, 1.8), "medium": (1.8, 2.6), "strong": (2.6, 4.0)},
    "noise": {"light": (0.01, 0.03), "medium": (0.03, 0.06), "strong": (0.06, 0.12)},
    "cutout": {"light": (0.10, 0.16), "medium": (0.16, 0.25), "strong": (0.25, 0.35)},
}
_TEXT_RATES: dict[str, dict[str, float]] = {
    "sentence_drop": {"light": 0.10, "medium": 0.20, "strong": 0.35},
    "synonym": {"light": 0.25, "medium": 0.50, "strong": 0.80},
    "delete": {"light": 0.05, "medium": 0.10, "strong": 0.20},
    "shuffle": {"light": 1.5, "medium": 2.25, "strong": 3.0},
}


def _check(severity: str, ops, allowed: tuple[str, ...], kind: str) -> list[str]:
    """Validate names early and loudly: a typo in a config must not silently disable an op."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown perturbation severity {severity!r}; allowed: {', '.join(SEVERITIES)}")
    if isinstance(ops, str):
        raise ValueError(f"{kind} ops must be a list of names, got the string {ops!r}; e.g. [{ops!r}]")
    bad = [op for op in ops if op not in allowed]
    if bad:
        raise ValueError(f"unknown {kind} perturbation op(s) {bad}; allowed: {', '.join(allowed)}")
    return [op for op in allowed if op in ops]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    """n draws from U(lo, hi) on ``device``, taken from ``generator`` on the generator's device.

    Drawing on the generator's own device keeps results identical for a given generator
    whether the images live on CPU or GPU (a CPU generator cannot fill a CUDA tensor).
    """
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=gen_device)
    return (lo + (hi - lo) * u).to(device)


def _signed(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    """Magnitude in [lo, hi] with a random sign."""
    mag = _uniform(n, lo, hi, generator, device)
    sign = torch.where(_uniform(n, 0.0, 1.0, generator, device) < 0.5, -1.0, 1.0)
    return mag * sign


def _apply_separable(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[b] = rows[b] @ images[b] @ cols[b]^T per channel.

    rows: [B, H, H], cols: [B, W, W]. A per-sample linear resampling matrix lets every sample
    have its own blur width / resize factor in one batched matmul (O(H) per pixel: cheap at
    the 64-224 px this project uses, and no per-sample Python loop on the GPU).
    """
    out = torch.matmul(rows.unsqueeze(1), images)  # [B, C, H, W]
    return torch.matmul(out, cols.transpose(1, 2).unsqueeze(1))


# Gaussian weights below this are set to exactly 0. Far out in the tail (beyond ~11.7 sigma)
# they add under 1e-30 to a pixel in [0, 1], which no float32 sum of visible size can hold; but
# as subnormal floats (below 1.2e-38), or multiplied by dark pixels into them, they made the
# blur's CPU matmuls ~10x slower (3.1 ms against 0.3 ms per [96, 64, 64] bmm, 2026-12-05).
_NEGLIGIBLE_WEIGHT = 1e-30


def _gaussian_matrix(n: int, sigma: torch.Tensor) -> torch.Tensor:
    """[B, n, n] row-normalised Gaussian blur along one axis (renormalising at the borders
    avoids the dark frame that zero padding would add)."""
    pos = torch.arange(n, device=sigma.device, dtype=sigma.dtype)
    d2 = (pos[:, None] - pos[None, :]) ** 2  # [n, n]
    w = torch.exp(-d2[None] / (2 * sigma[:, None, None] ** 2))
    w = w.masked_fill(w < _NEGLIGIBLE_WEIGHT, 0.0)
    return w / w.sum(-1, keepdim=True)


def _down_up_matrix(n: int, factor: torch.Tensor) -> torch.Tensor:
    """[B, n, n] = upsample(bilinear) @ downsample(antialiased triangle filter) along one axis.

    Sample b is reduced to m_b = round(n / factor_b) pixels and brought back to n. Rows of the
    down matrix beyond m_b are zero, so one [n, n] shape holds every m_b.
    """
    dtype, device = factor.dtype, factor.device
    m = torch.clamp(torch.round(n / factor), 1, n)  # [B] low-res length
    scale = n / m  # [B] original pixels per low-res pixel
    k = torch.arange(n, device=device, dtype=dtype)  # low-res index (valid where k < m)
    i = torch.arange(n, device=device, dtype=dtype)  # original index
    valid = k[None, :] < m[:, None]  # [B, n]
    # Down: low-res sample k averages originals with a triangle of half-width `scale`
    # centred on its footprint centre (what antialiased bilinear resizing does).
    centre = (k[None, :] + 0.5) * scale[:, None] - 0.5  # [B, n]
    tri = 1 - (i[None, None, :] - centre[:, :, None]).abs() / scale[:, None, None]
    down = tri.clamp(min=0) * valid[:, :, None]  # [B, n(k), n(i)]
    down = down / down.sum(-1, keepdim=True).clamp(min=1e-12)
    # Up: original pixel i reads low-res position x (align_corners=False), bilinear weights.
    x = ((i[None, :] + 0.5) / scale[:, None] - 0.5).clamp(min=0)  # [B, n]
    x = torch.minimum(x, m[:, None] - 1)
    up = (1 - (x[:, :, None] - k[None, None, :]).abs()).clamp(min=0) * valid[:, None, :]  # [B, n(i), n(k)]
    return torch.bmm(up, down)


def perturb_images(
    images: torch.Tensor, severity: str, ops: list[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    """Perturb a batch of images; see the module docstring for the parameter table.

    images: float [B, C, H, W] in [0, 1] on any device. Every sample draws its own parameters
    for every op in ``ops``; results are deterministic given ``generator`` (``None`` uses the
    global RNG). Returns a new tensor of the same shape and dtype, clamped to [0, 1], except
    for severity "none" or empty ``ops``, which return ``images`` itself.
    """
    active = _check(severity, ops, IMAGE_OPS, "image")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(
            f"perturb_images expects a float tensor [B, C, H, W] in [0, 1], got {tuple(images.shape)} "
            f"{images.dtype}; convert uint8 images with images.float() / 255 first"
        )
    if severity == "none" or not active or images.shape[0] == 0:
        return images
    b, c, h, w = images.shape
    device, in_dtype = images.device, images.dtype
    x = images.float()  # bf16 matmuls would blur the measurement of small perturbations
    for op in active:
        lo, hi = _IMAGE_RANGES[op][severity]
        if op == "gamma":
            log_gamma = _signed(b, lo, hi, generator, device).view(b, 1, 1, 1)
            log_contrast = _signed(b, lo, hi, generator, device).view(b, 1, 1, 1)
            x = x.clamp(0, 1) ** torch.exp(log_gamma)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * torch.exp(log_contrast) + mean
        elif op == "blur":
            sigma = _uniform(b, lo, hi, generator, device)
            x = _apply_separable(x, _gaussian_matrix(h, sigma), _gaussian_matrix(w, sigma))
        elif op == "downsample":
            factor = _uniform(b, lo, hi, generator, device)
            x = _apply_separable(x, _down_up_matrix(h, factor), _down_up_matrix(w, factor))
        elif op == "noise":
            std = _uniform(b, lo, hi, generator, device).view(b, 1, 1, 1)
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(x.shape, generator=generator, device=gen_device).to(device)
            x = x + std * noise
        elif op == "cutout":
            frac = _uniform(b, lo, hi, generator, device)
            side_h, side_w = (frac * h).round().clamp(min=1), (frac * w).round().clamp(min=1)
            top = (_uniform(b, 0.0, 1.0, generator, device) * (h - side_h + 1)).floor()
            left = (_uniform(b, 0.0, 1.0, generator, device) * (w - side_w + 1)).floor()
            ys = torch.arange(h, device=device)[None, :]
            xs = torch.arange(w, device=device)[None, :]
            in_y = (ys >= top[:, None]) & (ys < (top + side_h)[:, None])  # [B, H]
            in_x = (xs >= left[:, None]) & (xs < (left + side_w)[:, None])  # [B, W]
            hole = (in_y[:, :, None] & in_x[:, None, :]).unsqueeze(1)  # [B, 1, H, W]
            fill = x.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
            x = torch.where(hole, fill, x)
    return x.clamp(0, 1).to(in_dtype)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

# Groups of interchangeable spellings of one medical concept; every member may replace every
# other. Casing is the natural one (abbreviations upper-case) and is kept on replacement.
MEDICAL_SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("computed tomography", "CT"),
    ("magnetic resonance imaging", "MRI", "MR imaging"),
    ("magnetic resonance", "MR"),
    ("positron emission tomography", "PET"),
    ("x-ray", "radiograph", "plain film"),
    ("chest x-ray", "CXR", "chest radiograph"),
    ("ultrasound", "sonography", "USG"),
    ("left", "lt"),
    ("right", "rt"),
    ("bilateral", "bilat"),
    ("abdomen", "abd"),
    ("abdominal", "abd"),
    ("chest", "thorax"),
    ("anteroposterior", "AP"),
    ("posteroanterior", "PA"),
    ("lateral", "lat"),
    ("superior", "sup"),
    ("inferior", "inf"),
    ("fracture", "fx"),
    ("history", "hx"),
    ("diagnosis", "dx"),
    ("patient", "pt"),
    ("approximately", "approx"),
    ("centimeter", "cm"),
    ("centimeters", "cm"),
    ("millimeter", "mm"),
    ("millimeters", "mm"),
    ("intravenous", "IV"),
    ("contrast-enhanced", "post-contrast", "with contrast"),
    ("pneumothorax", "PTX"),
    ("pulmonary embolism", "PE"),
    ("myocardial infarction", "MI"),
    ("cerebrospinal fluid", "CSF"),
    ("gastrointestinal", "GI"),
    ("hemorrhage", "haemorrhage", "bleed"),
    ("edema", "oedema"),
    ("tumor", "tumour", "neoplasm"),
    ("cardiomegaly", "enlarged heart"),
    ("unremarkable", "normal"),
    ("shows", "demonstrates", "reveals"),
    ("image", "scan"),
    ("findings", "observations"),
)
# One-way swaps: a specific term may be generalised, not the reverse (a "lesion" need not be
# a "nodule", so lesion -> nodule would invent a finding; nodule -> lesion only blurs it).
MEDICAL_SYNONYMS_ONE_WAY: dict[str, tuple[str, ...]] = {
    "lesion": ("mass", "nodule", "abnormality"),
    "mass": ("lesion",),
    "nodule": ("lesion",),
    "opacity": ("density", "lesion"),
}


def _build_synonym_index() -> tuple[dict[tuple[str, ...], tuple[str, ...]], int]:
    """(lower-cased word tuple -> alternatives, longest phrase length in words)."""
    index: dict[tuple[str, ...], list[str]] = {}
    for group in MEDICAL_SYNONYM_GROUPS:
        for term in group:
            alts = index.setdefault(tuple(term.lower().split()), [])
            alts.extend(t for t in group if t.lower() != term.lower() and t not in alts)
    for term, targets in MEDICAL_SYNONYMS_ONE_WAY.items():
        alts = index.setdefault(tuple(term.lower().split()), [])
        alts.extend(t for t in targets if t not in alts)
    return {k: tuple(v) for k, v in index.items()}, max(len(k) for k in index)


_SYNONYM_INDEX, _MAX_PHRASE = _build_synonym_index()
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# Punctuation around a word ("(CT),") is kept in place when the word itself is swapped.
_EDGE_PUNCT = "\"'()[]{},.;:!?"
_NEGATIONS = frozenset({"no", "not", "without", "negative", "absent", "none", "never", "nor", "neither"})


def _swap_synonyms(words: list[str], p: float, rng: random.Random) -> list[str]:
    """Greedy longest-match of table phrases; each match is swapped with probability p."""
    out: list[str] = []
    cores = [w.strip(_EDGE_PUNCT).lower() for w in words]
    i, n = 0, len(words)
    while i < n:
        for length in range(min(_MAX_PHRASE, n - i), 0, -1):
            alts = _SYNONYM_INDEX.get(tuple(cores[i : i + length]))
            if alts is None:
                continue
            first, last = words[i], words[i + length - 1]
            # Only the phrase's outer edges may carry punctuation ("computed, tomography" is no match).
            inner_ok = all(words[j] == words[j].strip(_EDGE_PUNCT) for j in range(i + 1, i + length - 1))
            if length > 1 and not (
                inner_ok and first == first.rstrip(_EDGE_PUNCT) and last == last.lstrip(_EDGE_PUNCT)
            ):
                continue
            if rng.random() < p:
                prefix = first[: len(first) - len(first.lstrip(_EDGE_PUNCT))]
                suffix = last[len(last.rstrip(_EDGE_PUNCT)) :]
                alt = rng.choice(alts)
                # A capitalised word keeps its capital ("Left" -> "Lt"); an abbreviation does not
                # pass its capitals on ("on CT" -> "on computed tomography").
                core = first.lstrip(_EDGE_PUNCT)
                if core[:1].isupper() and not core.isupper() and alt[:1].islower():
                    alt = alt[0].upper() + alt[1:]
                out.extend((prefix + alt + suffix).split())
            else:
                out.extend(words[i : i + length])
            i += length
            break
        else:
            out.append(words[i])
            i += 1
    return out


def perturb_text(text: str, severity: str, ops: list[str], rng: random.Random) -> str:
    """Perturb one text; see the module docstring for the rates.

    Deterministic given ``rng``'s state. Severity "none" or empty ``ops`` return ``text``
    unchanged; otherwise whitespace is collapsed to single spaces. A non-empty input never
    yields an empty output: at least one sentence and one word always survive.
    """
    active = _check(severity, ops, TEXT_OPS, "text")
    if severity == "none" or not active or not text.strip():
        return text
    rates = {op: _TEXT_RATES[op][severity] for op in active}
    if "sentence_drop" in rates:
        sentences = _SENTENCE_END.split(text.strip())
        if len(sentences) > 1:
            kept = [s for s in sentences if rng.random() >= rates["sentence_drop"]]
            text = " ".join(kept) if kept else rng.choice(sentences)
    words = text.split()
    if "synonym" in rates:
        words = _swap_synonyms(words, rates["synonym"], rng)
    if "delete" in rates and len(words) > 1:
        p = rates["delete"]
        kept = [w for w in words if rng.random() >= p or w.strip(_EDGE_PUNCT).lower() in _NEGATIONS]
        words = kept if kept else [rng.choice(words)]
    if "shuffle" in rates and len(words) > 1:
        k = rates["shuffle"]
        keys = [i + rng.random() * k for i in range(len(words))]
        words = [w for _, w in sorted(zip(keys, words), key=lambda kw: kw[0])]
    return " ".join(words)


def synonym_table() -> dict[str, tuple[str, ...]]:
    """The swap table as {lower-cased term: alternatives}, e.g. for SynthRad reporting styles."""
    return {" ".join(k): v for k, v in _SYNONYM_INDEX.items()}


def severity_parameters(severity: str) -> dict[str, object]:
    """The magnitude ranges/rates a severity uses, for logging beside evaluation results."""
    _check(severity, [], IMAGE_OPS, "image")
    if severity == "none":
        return {}
    return {
        **{f"image.{op}": r[severity] for op, r in _IMAGE_RANGES.items()},
        **{f"text.{op}": r[severity] for op, r in _TEXT_RATES.items()},
    }


class SeededPerturbation:
    """One severity of the image and text perturbations with fixed seeds, for evaluation: the
    batch that starts at index ``offset`` of a set is perturbed the same way on every run (at
    the same batch size); images and texts draw from separate streams."""

    def __init__(self, severity: str, image_ops: list[str], text_ops: list[str], seed: int = 0):
        _check(severity, image_ops, IMAGE_OPS, "image")
        _check(severity, text_ops, TEXT_OPS, "text")
        self.severity, self.image_ops, self.text_ops, self.seed = severity, list(image_ops), list(text_ops), seed

    def images(self, images: torch.Tensor, offset: int) -> torch.Tensor:
        """uint8 [B, C, H, W] -> uint8 [B, C, H, W]."""
        g = torch.Generator(device=images.device).manual_seed(self.seed * 7919 + offset)
        out = perturb_images(images.float() / 255.0, self.severity, self.image_ops, g)
        return (out * 255.0).round().clamp(0, 255).to(torch.uint8)

    def texts(self, texts: list[str], offset: int) -> list[str]:
        rng = random.Random(self.seed * 104729 + offset)
        return [perturb_text(t, self.severity, self.text_ops, rng) for t in texts]
