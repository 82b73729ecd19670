"""Masking as pure tensor functions (no module state): exact per-sample counts, special tokens
never masked, and Robust-MMR's asymmetric perturbation-aware draw.

Convention everywhere: ``mask`` is bool and True = removed (masked), as in MAE.

Exact counts: sample ``i`` with ``n_i`` maskable positions and ratio ``r_i`` gets exactly
``round(r_i * n_i)`` masked positions, clamped to ``[0, n_i - 1]`` so that at least one maskable
position is always kept. Masks are drawn by ranking uniform noise (MAE's argsort trick), which
supports a different ratio per sample and needs no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from raymmr.config import MaskingConfig, PerturbationConfig


def uniform(shape: tuple[int, ...], generator: torch.Generator | None = None, device=None) -> Tensor:
    """U(0, 1) draws made on the generator's own device, then moved to ``device``: a CPU generator
    can drive CUDA tensors, and a given generator gives the same draws whatever the device."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def exact_counts(ratio: Tensor, available: Tensor) -> Tensor:
    """round(ratio * available) per sample, clamped to [0, available - 1].  [B] float, [B] int -> [B] int64"""
    counts = torch.round(ratio.float() * available.float()).long()
    return torch.minimum(counts, (available.long() - 1).clamp_min(0)).clamp_min(0)


def random_mask(available: Tensor, ratio: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    """Mask exactly ``exact_counts(ratio, available.sum(1))`` of each row's available positions.

    available: [B, N] bool (True = may be masked); ratio: float or [B] -> mask [B, N] bool (True = masked).
    """
    b, n = available.shape
    ratio = torch.as_tensor(ratio, dtype=torch.float32, device=available.device).expand(b)
    noise = uniform((b, n), generator, available.device)
    noise = noise.masked_fill(~available, 2.0)  # unavailable positions rank after every available one
    rank = noise.argsort(dim=1).argsort(dim=1)  # [B, N] rank of each position in its row
    counts = exact_counts(ratio, available.sum(1))
    return rank < counts[:, None]


def patch_mask(batch_size: int, num_patches: int, ratio: Tensor | float, generator=None, device=None) -> Tensor:
    """Random patch mask with exact per-sample counts.  -> [B, N] bool (True = masked)"""
    available = torch.ones(batch_size, num_patches, dtype=torch.bool, device=device)
    return random_mask(available, ratio, generator)


def maskable_tokens(ids: Tensor, attention_mask: Tensor, special_ids: tuple[int, ...] = ()) -> Tensor:
    """Token positions that may be masked: real (non-pad) tokens except the first ([CLS] / <sot>)
    and the last real one ([SEP] / <eot>), and except any id in ``special_ids``.

    Position-based so that it holds for any tokenizer that wraps a text in start/end tokens
    (BERT-style and CLIP-style alike) without the model knowing their ids.
    ids, attention_mask: [B, L] -> [B, L] bool
    """
    valid = attention_mask.bool()
    length = valid.sum(1, keepdim=True)  # [B, 1]
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    out = valid & (pos > 0) & (pos < length - 1)
    for sid in special_ids:
        out &= ids != sid
    return out


def apply_token_mask(ids: Tensor, mask: Tensor, mask_token_id: int) -> Tensor:
    """Replace masked tokens by the tokenizer's mask id.  [B, L] -> [B, L]"""
    return ids.masked_fill(mask, mask_token_id)


def max_masked_tokens(seq_len: int, max_ratio: float) -> int:
    """A static upper bound K on any sample's masked-token count for text of length ``seq_len``
    (at most seq_len - 2 maskable tokens), so masked-token logits are [B, K, V], never [B, L, V].
    The +1 absorbs float32-vs-float64 rounding at exact halves."""
    maskable = max(seq_len - 2, 1)
    return max(1, min(maskable, int(max_ratio * maskable) + 1))


def masked_positions(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` masked positions of each row, in increasing order, padded with unmasked ones.

    mask: [B, L] bool -> (index [B, k] int64, valid [B, k] bool: the position really is masked).
    Rows with more than ``k`` masked positions lose the rest; callers pick ``k`` from
    ``max_masked_tokens`` so that never happens.
    """
    order = (~mask).to(torch.int8).argsort(dim=1, stable=True)  # masked positions first, order kept
    index = order[:, :k]
    return index, mask.gather(1, index)


# --------------------------------------------------------------------------- asymmetric draw


@dataclass
class AsymmetricDraw:
    """Per-sample decisions of asymmetric perturbation-aware masking (Robust-MMR).

    Sample i's strong side is perturbed at ``strong`` severity and masked at ``mask_ratio_high``,
    its other side at ``light`` and ``mask_ratio_low``. With ``masking.asymmetric`` false there is
    no perturbation (``perturb`` False, both severities "none") and the ratios are
    ``mask_ratio_img`` / ``mask_ratio_txt``.
    """

    image_strong: Tensor  # [B] bool: True = the image is the strong side (the text the light one)
    ratio_img: Tensor  # [B] float
    ratio_txt: Tensor  # [B] float
    strong: str  # image severity on the strong side
    light: str  # image severity on the light side
    perturb: bool  # False: clean image and clean text


def asymmetric_draw(
    batch_size: int,
    masking: MaskingConfig,
    perturbation: PerturbationConfig,
    generator: torch.Generator | None = None,
    device=None,
) -> AsymmetricDraw:
    """Draw each sample's strong side with probability ``p_img_side`` for the image."""
    if not masking.asymmetric:
        no = torch.zeros(batch_size, dtype=torch.bool, device=device)
        full = torch.full((batch_size,), 1.0, device=device)
        return AsymmetricDraw(no, full * masking.mask_ratio_img, full * masking.mask_ratio_txt, "none", "none", False)
    image_strong = uniform((batch_size,), generator, device) < masking.p_img_side
    high = torch.full((batch_size,), masking.mask_ratio_high, device=device)
    low = torch.full((batch_size,), masking.mask_ratio_low, device=device)
    return AsymmetricDraw(
        image_strong=image_strong,
        ratio_img=torch.where(image_strong, high, low),
        ratio_txt=torch.where(image_strong, low, high),
        strong=perturbation.strong,
        light=perturbation.light,
        perturb=True,
    )


def max_text_ratio(masking: MaskingConfig) -> float:
    """The largest text mask ratio a sample can get (sizes the masked-token logits statically)."""
    return max(masking.mask_ratio_high, masking.mask_ratio_low) if masking.asymmetric else masking.mask_ratio_txt
