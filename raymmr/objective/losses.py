"""Loss terms as small pure functions; each returns one scalar tensor.

Masked losses (patches, tokens, answers, KL, soft CE) return ``local_sum / mean_count(local_count)``
where ``mean_count`` averages the count over data-parallel ranks. After the data-parallel gradient
average this equals ``global_sum / global_count``: every masked token weighs the same whichever
rank it landed on (torchtitan's ``global_valid_tokens``). ``mean_count`` is a collective, so these
functions call it exactly once each, whatever the data. Logits are upcast to float32 here, on
already-reduced shapes ([B, K, V] at masked positions only, never [B, L, V]).

InfoNCE terms are means over the local batch: negatives are the other samples of the same micro
batch (CMDPI Eq. 7, N = the batch), which is what a per-rank InfoNCE can see without gathering.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

MeanCount = Callable[[Tensor], Tensor]


def identity_count(count: Tensor) -> Tensor:
    """``mean_count`` for a single process: the local count is the mean."""
    return count


def _normalise(total: Tensor, count: Tensor, mean_count: MeanCount) -> Tensor:
    # A count of 0 on every rank means the sum is 0 as well: return 0, not 0/0.
    return total / mean_count(count.float()).clamp_min(1e-6)


# --------------------------------------------------------------------------- reconstruction (Eq. 5)


def masked_patch_mse(
    pred: Tensor, target: Tensor, mask: Tensor, *, norm_pix: bool = False, mean_count: MeanCount = identity_count
) -> Tensor:
    """L_img: mean squared error per patch, averaged over masked patches (MAE).

    pred, target: [B, N, P]; mask: [B, N] bool (True = masked = counted). With ``norm_pix`` each
    target patch is standardised by its own mean and variance first (MAE's norm_pix_loss)."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    weight = mask.float()
    return _normalise((per_patch * weight).sum(), weight.sum(), mean_count)


def masked_token_ce(logits: Tensor, targets: Tensor, *, mean_count: MeanCount = identity_count) -> Tensor:
    """L_txt: cross-entropy at masked token positions.  logits [B, K, V]; targets [B, K] (-100 = ignore)"""
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return _normalise(total, (targets != -100).sum(), mean_count)


def answer_ce(logits: Tensor, answers: Tensor, *, mean_count: MeanCount = identity_count) -> Tensor:
    """L_ans: cross-entropy of the answer head.  logits [B, A]; answers [B] (-100 = no answer, e.g. captions)"""
    total = F.cross_entropy(logits.float(), answers, ignore_index=-100, reduction="sum")
    return _normalise(total, (answers != -100).sum(), mean_count)


# --------------------------------------------------------------------------- contrastive (Eq. 6, 7)


def info_nce(a: Tensor, b: Tensor, *, temperature: float, valid: Tensor | None = None) -> Tensor:
    """Contra(a, b) (Eq. 7): -1/N sum_i log softmax_j(sim(a_i, b_j) / tau)[i], sim = cosine.

    a, b: [B, E]; valid: [B] bool or None. Only valid samples are anchors and negatives. With fewer
    than 2 valid samples the result is an exact 0 that stays connected to the graph, so every rank
    backpropagates through the same graph."""
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature  # [B, B]
    if valid is None:
        return (torch.logsumexp(logits, dim=1) - logits.diagonal()).mean()
    eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(~(valid[None, :] | eye), float("-inf"))  # the positive always stays
    per_anchor = torch.logsumexp(logits, dim=1) - logits.diagonal()  # [B], finite
    weight = valid.float()
    n = weight.sum()
    return (per_anchor * weight).sum() / n.clamp_min(1.0) * (n >= 2)


def symmetric_info_nce(a: Tensor, b: Tensor, *, temperature: float, valid: Tensor | None = None) -> Tensor:
    """Contra(a, b) + Contra(b, a): C_inter (Eq. 6) and the domain-consistency term."""
    return info_nce(a, b, temperature=temperature, valid=valid) + info_nce(b, a, temperature=temperature, valid=valid)


def intra_info_nce(
    online_img: Tensor, momentum_img: Tensor, online_txt: Tensor, momentum_txt: Tensor, *, temperature: float,
    valid: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """C_intra (Eq. 6) = Contra(h_I, ĥ_I) + Contra(h_T, ĥ_T); the momentum side carries no gradient."""
    return info_nce(online_img, momentum_img.detach(), temperature=temperature, valid=valid) + info_nce(
        online_txt, momentum_txt.detach(), temperature=temperature, valid=valid
    )


def domain_consistency(fused_a: Tensor, fused_b: Tensor, *, temperature: float, valid: Tensor | None = None) -> Tensor:
    """dom_consist: the same samples' fused representations h_F under two domain perturbations
    must be each other's nearest neighbours: symmetric InfoNCE between the two views."""
    return symmetric_info_nce(fused_a, fused_b, temperature=temperature, valid=valid)


# --------------------------------------------------------------------------- modality resilience


def answer_kl(
    logits: Tensor, reference_logits: Tensor, valid: Tensor, *, mean_count: MeanCount = identity_count
) -> Tensor:
    """KL(p_ref || p) summed over valid samples / count; the reference (full input) is detached.
    logits, reference_logits: [B, A]; valid: [B] bool"""
    logp = F.log_softmax(logits.float(), dim=-1)
    ref = F.log_softmax(reference_logits.detach().float(), dim=-1)
    kl = F.kl_div(logp, ref, log_target=True, reduction="none").sum(-1)  # [B]
    weight = valid.float()
    return _normalise((kl * weight).sum(), weight.sum(), mean_count)


def modality_resilience(
    drop_answer_logits: Tensor,
    full_answer_logits: Tensor,
    answer_valid: Tensor,
    pixel_pred: Tensor,
    pixel_target: Tensor,
    missing_image_patches: Tensor,
    token_logits: Tensor,
    missing_text_targets: Tensor,
    *,
    norm_pix: bool,
    mean_count: MeanCount = identity_count,
) -> Tensor:
    """mod_resil = KL(answer | full input || answer | one modality missing)
                 + MSE of the missing image's masked patches + CE of the missing text's masked tokens.

    missing_image_patches: [B, N] bool, masked patches of image-dropped samples only;
    missing_text_targets: [B, K] token targets of text-dropped samples (-100 elsewhere)."""
    kl = answer_kl(drop_answer_logits, full_answer_logits, answer_valid, mean_count=mean_count)
    rec_img = masked_patch_mse(pixel_pred, pixel_target, missing_image_patches, norm_pix=norm_pix, mean_count=mean_count)
    rec_txt = masked_token_ce(token_logits, missing_text_targets, mean_count=mean_count)
    return kl + rec_img + rec_txt


# --------------------------------------------------------------------------- fine-tuning (Eq. 8-12)


def deviate_features(local: Tensor, partner_local: Tensor, eps: Tensor) -> Tensor:
    """H~_I = eps * H_I + (1 - eps) * Ĥ_I (Eq. 8).  [B, N, d], [B, N, d], eps [B] -> [B, N, d]"""
    eps = eps.to(local.dtype)[:, None, None]
    return eps * local + (1 - eps) * partner_local


def mix_heads(hidden: Tensor, partner: Tensor, lam: Tensor) -> Tensor:
    """h_mix = lam * h_D + (1 - lam) * h_D[partner] (Eq. 11).  [B, d], [B] int64, [B] -> [B, d]"""
    lam = lam.to(hidden.dtype)[:, None]
    return lam * hidden + (1 - lam) * hidden[partner]


def mixup_targets(answers: Tensor, partner: Tensor, lam: Tensor, num_answers: int) -> Tensor:
    """Ans_mix = lam * onehot(Ans) + (1 - lam) * onehot(Ans[partner]) (Eq. 11).  -> [B, A], rows sum to 1.
    Rows whose answer is -100 are filled as if the answer were 0; callers mask them out."""
    onehot = F.one_hot(answers.clamp_min(0), num_answers).float()  # [B, A]
    lam = lam.float()[:, None]
    return lam * onehot + (1 - lam) * onehot[partner]


def soft_cross_entropy(
    logits: Tensor, target_probs: Tensor, valid: Tensor, *, mean_count: MeanCount = identity_count
) -> Tensor:
    """-sum_a q_a log p_a, summed over valid samples / count.  [B, A], [B, A], [B] bool"""
    per_sample = -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    weight = valid.float()
    return _normalise((per_sample * weight).sum(), weight.sum(), mean_count)


def head_mixup_ce(
    logits: Tensor, answers: Tensor, partner: Tensor, lam: Tensor, *, mean_count: MeanCount = identity_count
) -> Tensor:
    """L_mix (Eq. 12): CE between FFN_A(h_mix) [B, A] and Ans_mix; samples whose own or partner's
    answer is unknown do not count."""
    targets = mixup_targets(answers, partner, lam, logits.shape[-1])
    valid = (answers >= 0) & (answers[partner] >= 0)
    return soft_cross_entropy(logits, targets, valid, mean_count=mean_count)


# --------------------------------------------------------------------------- lambda samplers


def _log_gamma_sample(shape: float, n: int, generator, device, proposals: int = 24) -> Tensor:
    """log of Gamma(shape, 1) draws, Marsaglia-Tsang with a fixed number of vectorised proposals
    (acceptance >= 95% each for shape >= 1, so 24 proposals fail with probability < 1e-31).
    Works with a torch.Generator on any device and never syncs with the host; torch's own Gamma
    sampler takes no generator. shape < 1 uses Gamma(a) = Gamma(a + 1) * U^(1/a), in logs."""
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    gen_device = generator.device if generator is not None else device
    x = torch.randn(n, proposals, device=gen_device, generator=generator, dtype=torch.float64).to(device)
    u = torch.rand(n, proposals, device=gen_device, generator=generator, dtype=torch.float64).to(device)
    v = (1 + c * x) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * x**2 + d - d * v + d * torch.log(v.clamp_min(1e-300)))
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first accepted proposal
    log_g = torch.log((d * v).clamp_min(1e-300)).gather(1, first).squeeze(1)
    if boost:
        u1 = torch.rand(n, device=gen_device, generator=generator, dtype=torch.float64).to(device).clamp_min(1e-300)
        log_g = log_g + torch.log(u1) / shape
    return log_g


def sample_lambda(
    dist: str, n: int, a: float = 1.0, b: float = 1.0, fixed: float = 0.5, generator=None, device=None
) -> Tensor:
    """Mixup coefficients [n]: ``uniform`` U(0, 1) (CMDPI), ``beta`` Beta(a, b), or ``fixed`` (all = fixed)."""
    if dist == "uniform":
        gen_device = generator.device if generator is not None else device
        return torch.rand(n, device=gen_device, generator=generator).to(device)
    if dist == "beta":
        log_x = _log_gamma_sample(a, n, generator, device)
        log_y = _log_gamma_sample(b, n, generator, device)
        return torch.sigmoid(log_x - log_y).float()  # X / (X + Y), stable for tiny a, b
    if dist == "fixed":
        return torch.full((n,), float(fixed), device=device)
    raise ValueError(f"unknown mixup distribution {dist!r}; choose uniform, beta or fixed")
