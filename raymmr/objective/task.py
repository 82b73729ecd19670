"""Per-step tasks: (model, batch, config) -> dict of named loss terms + ``loss`` = sum weight * term.

The training loop (precision, accumulation, optimizer, logging) lives in ``raymmr.train``; this
module only decides which forward passes a step runs and which loss each feeds. ``plan_passes``
is the single description of those passes; the FLOP count (``raymmr.objective.flops``) reads it too.

Pre-training (CMDPI §3.2 + Robust-MMR), per batch:
  clean     Eq. 1 on the clean input: h_I, h_T, h_F                    -> con_inter, h_F for global rec.
  masked    Eq. 2 on the asymmetric perturbed-and-masked view: H'_I, H'_T (+ h'_I, h'_T for con_intra);
            the image's strong/light side is drawn per sample (``masking.asymmetric``); the targets
            are the clean image's patches and the view's own tokens (a deleted or shuffled
            word has no clean token at its position, so text targets cannot be the clean text).
  momentum  EMA encoders on the clean input: ĥ_I, ĥ_T                  -> con_intra
  global    RecNet(h_F, H'_I, H'_T)   -> rec_*_global (and mod_resil's reference answer)
  local     RecNet(h~,  H'_I, H'_T)   -> rec_*_local
  domain    encoders on a second domain draw: image perturbed at ``perturbation.light`` or
            "medium" (per sample, 50/50) + the loader's ``text_ids_light`` -> h_F^B;
            dom_consist = symmetric InfoNCE(h_F, h_F^B) over every sample, VQA included, and view A
            is the clean pass (the source domain; it reuses h_F): two decisions against docs/SPEC.md's
            letter, with their reasons in the README ("Decisions").
  dropped   a random ``round(p_drop * B)`` of the samples, each with its image or its text (50/50)
            replaced by learned missing tokens (H'_I or H'_T, and h_I or h_T inside the fusion):
            RecNet(h_F^drop, ...) -> mod_resil = KL(p_full || p_drop) on VQA samples, p_full being
            the global pass's answer distribution (both modalities, same masked view, detached),
            + reconstruction of the missing side at its masked positions (an unbiased subsample of
            reconstructing all of it, at the cost of one masked view).
The image-text contrastive terms (con_inter, con_intra) use caption samples only (CMDPI §3.2.3). Negatives are the local micro batch.

Fine-tuning (CMDPI §3.3) optimises Eq. 13, w_mix * mix + w_diff * (diff_img + diff_txt), or,
without both (the plain fine-tuning of the ``cmdpi_finetune`` ablation arm), w_ans_finetune *
rec_ans_global; the config refuses the answer CE beside mix or diff (Eq. 13 has no such term):
  view      encoders on the input, unmasked: h_I, H_I, h_T, H_T, h_F. With
            ``perturbation.in_finetune`` a share (``perturbation.finetune_share``) of the samples
            has its image or question (drawn with ``masking.p_img_side``) strongly perturbed and
            the other lightly; the rest are seen clean.
  answer    RecNet(h_F, H_I, H_T) -> rec_ans_global: the answer CE on exactly what inference sees.
  deviated  H~_I = eps * H_I + (1 - eps) * Ĥ_I (Eq. 8), eps ~ U(0, 1) per sample; Ĥ_I is the local
            features (an image-encoder pass) of the sample's partner, which the loader draws afresh
            every epoch, uniformly among the other images of the training split whose cosine with
            the sample's image in the pre-trained model's index is in [``similarity_threshold``,
            SAME_IMAGE_COS) (``data.loader.Partners``), and brings as ``partner_image``. A sample
            without one reconstructs from its own features (H~_I = H_I). Measured, not losses:
            ``diff_partner_rate`` (the share that had one), ``diff_partner_cos`` (their mean cosine).
  diff      RecNet(h_F, H~_I, H'_T): the question is masked at ``masking.mask_ratio_txt`` (H'_T) so
            that diff_txt is a real prediction (the unmasked text would be copied through).
            diff_img = MSE over all patches of the clean current image (Eq. 10), diff_txt = masked CE.
  mix       head mixup (Eq. 11-12) on an answer slot h_D, with a mate in the batch of the same organ
            and question type where known (else any VQA sample: ``mix_fallback_rate`` is the share
            of answered samples whose mate was such a fallback), lam ~ mixup_dist. h_D comes from
            ``finetune.mix_source``: "diff", the diff pass (its question masked), or
            "whole_question", one more RecNet pass over the same H~_I and the unmasked question,
            RecNet(h_F, H~_I, H_T) as Eq. 8 writes it: under Eq. 13 mix is the only answer
            supervision, and with "diff" the answer head never sees a whole question.

``mean_count`` is a collective (all-reduce); every rank calls it the same number of times in the
same order, because which terms and passes run depends only on the config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from raymmr.config import Config, FinetuneConfig, LossConfig, check_finetune_objective
from raymmr.objective.losses import (
    MeanCount,
    answer_ce,
    deviate_features,
    domain_consistency,
    head_mixup_ce,
    identity_count,
    intra_info_nce,
    masked_patch_mse,
    masked_token_ce,
    mix_heads,
    modality_resilience,
    sample_lambda,
    symmetric_info_nce,
)
from raymmr.objective.masking import (
    AsymmetricDraw,
    apply_token_mask,
    asymmetric_draw,
    maskable_tokens,
    masked_positions,
    max_masked_tokens,
    max_text_ratio,
    random_mask,
    uniform,
)
from raymmr.perturb import perturb_images

# term name -> the LossConfig weight that scales it
PRETRAIN_TERMS = {
    "rec_img_global": "w_img",
    "rec_txt_global": "w_txt",
    "rec_ans_global": "w_ans",
    "rec_img_local": "w_img",
    "rec_txt_local": "w_txt",
    "rec_ans_local": "w_ans",
    "con_inter": "w_con_inter",
    "con_intra": "w_con_intra",
    "dom_consist": "w_dom_consist",
    "mod_resil": "w_mod_resil",
}
FINETUNE_TERMS = {"rec_ans_global": "w_ans_finetune", "diff_img": "w_diff", "diff_txt": "w_diff", "mix": "w_mix"}
DOMAIN_SECOND_SEVERITY = "medium"  # the domain view's image is perturbed at perturbation.light or this
# Fine-tuning measurements, returned beside the terms (averaged and logged like them, never weighted):
PARTNER_RATE = "diff_partner_rate"  # share of samples whose deviated features had a similar image
PARTNER_COS = "diff_partner_cos"  # mean index cosine of those partners (per batch, over samples with one)
MIX_FALLBACK_RATE = "mix_fallback_rate"  # share of answered samples whose mixup mate was not a strict match


@dataclass(frozen=True)
class Plan:
    """Which passes one step runs; shared by the task and the FLOP count."""

    stage: str
    terms: tuple[str, ...]  # computed terms (weight > 0), in output order
    rec_heads: frozenset  # of "img", "txt", "ans": heads read by each pre-training reconstruction pass
    clean: bool  # online encoders on the unmasked input (fine-tuning: the possibly perturbed view)
    masked: bool  # pre-training: online encoders on the masked view
    momentum: bool
    recnet_global: bool
    recnet_global_grad: bool  # False: the global pass only serves as mod_resil's reference
    recnet_local: bool
    domain_view: bool
    dropped: bool
    answer_pass: bool  # fine-tuning: RecNet(h_F, H_I, H_T)
    diff_pass: bool  # fine-tuning: RecNet(h_F, H~_I, H'_T), the question masked (also mix with mix_source "diff")
    whole_question_pass: bool  # fine-tuning: RecNet(h_F, H~_I, H_T) for mix (mix_source "whole_question")

    @property
    def deviated(self) -> bool:
        """Fine-tuning encodes the partner images for H~_I."""
        return self.diff_pass or self.whole_question_pass


def plan_passes(stage: str, loss: LossConfig, finetune: FinetuneConfig | None = None) -> Plan:
    """The passes of one ``stage`` step with these loss weights; ``finetune`` (None: its defaults)
    says which pass head mixup reads."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    if stage == "finetune":
        check_finetune_objective(loss)
    table = PRETRAIN_TERMS if stage == "pretrain" else FINETUNE_TERMS
    terms = tuple(t for t, w in table.items() if getattr(loss, w) > 0)
    heads = frozenset(h for h, w in (("img", loss.w_img), ("txt", loss.w_txt), ("ans", loss.w_ans)) if w > 0)
    if not terms:
        raise ValueError(f"every {stage} loss weight is 0: nothing to train ({', '.join(sorted(set(table.values())))})")
    if stage == "finetune":
        no = dict(masked=False, momentum=False, recnet_global=False, recnet_global_grad=False, recnet_local=False,
                  domain_view=False, dropped=False)  # fmt: skip
        mix_source = (finetune or FinetuneConfig()).mix_source
        mix = "mix" in terms
        return Plan(stage, terms, frozenset(), clean=True, answer_pass="rec_ans_global" in terms,
                    diff_pass="diff_img" in terms or (mix and mix_source == "diff"),
                    whole_question_pass=mix and mix_source == "whole_question", **no)  # fmt: skip
    dropped = "mod_resil" in terms and loss.p_drop > 0
    rec = bool(heads)
    return Plan(
        stage,
        terms,
        heads,
        clean=rec or dropped or bool({"con_inter", "dom_consist", "mod_resil"} & set(terms)),
        masked=rec or dropped or "con_intra" in terms,
        momentum="con_intra" in terms,
        recnet_global=rec or dropped,
        recnet_global_grad=rec,
        recnet_local=rec,
        domain_view="dom_consist" in terms,
        dropped=dropped,
        answer_pass=False,
        diff_pass=False,
        whole_question_pass=False,
    )


def _total(terms: dict[str, Tensor], table: dict[str, str], loss: LossConfig) -> Tensor:
    return sum(getattr(loss, table[name]) * value for name, value in terms.items())


# --------------------------------------------------------------------------- views


@dataclass
class MaskedView:
    """Encoders' output on the masked view (Eq. 2) and the reconstruction targets."""

    h_img: Tensor  # [B, W_img]
    h_txt: Tensor  # [B, W_txt]
    local_img: Tensor  # H'_I [B, N, d]
    local_txt: Tensor  # H'_T [B, L, d]
    text_mask: Tensor  # [B, L] of the view's text
    patch_mask: Tensor  # [B, N] bool, True = masked
    pixel_target: Tensor  # [B, N, p*p*3] clean image patches
    token_index: Tensor  # [B, K] masked text positions
    token_targets: Tensor  # [B, K] the view's token ids there, -100 where not masked


def perturb_sides(images01: Tensor, draw: AsymmetricDraw, ops: list[str], generator) -> Tensor:
    """Each sample's image at the strong or the light severity of its draw.  [B, 3, S, S] in [0, 1]"""
    if not draw.perturb:
        return images01
    strong = perturb_images(images01, draw.strong, ops, generator)
    light = perturb_images(images01, draw.light, ops, generator)
    return torch.where(draw.image_strong[:, None, None, None], strong, light)


def text_view(batch: dict, draw: AsymmetricDraw) -> tuple[Tensor, Tensor]:
    """The text side of a draw: the loader's light view where the image is the strong side, its
    strong view elsewhere; the clean text when the draw does not perturb."""
    ids, mask = batch["text_ids"], batch["text_mask"]
    if not draw.perturb:
        return ids, mask
    pick = draw.image_strong[:, None]
    ids = torch.where(pick, batch.get("text_ids_light", ids), batch.get("text_ids_strong", ids))
    mask = torch.where(pick, batch.get("text_mask_light", mask), batch.get("text_mask_strong", mask))
    return ids, mask


def masked_view(model, images01: Tensor, clean_pixels: Tensor, batch: dict, cfg: Config, generator) -> MaskedView:
    b, device = images01.shape[0], images01.device
    draw = asymmetric_draw(b, cfg.masking, cfg.perturbation, generator, device)
    pixels = model.normalize(perturb_sides(images01, draw, cfg.perturbation.image_ops, generator))
    ids, mask = text_view(batch, draw)
    all_patches = torch.ones(b, model.num_patches, dtype=torch.bool, device=device)
    patch_mask = random_mask(all_patches, draw.ratio_img, generator)
    token_mask = random_mask(maskable_tokens(ids, mask), draw.ratio_txt, generator)
    h_img, local_img = model.image_encoder(pixels, patch_mask)
    h_txt, local_txt = model.text_encoder(apply_token_mask(ids, token_mask, model.mask_token_id), mask)
    index, valid = masked_positions(token_mask, max_masked_tokens(ids.shape[1], max_text_ratio(cfg.masking)))
    return MaskedView(
        h_img, h_txt, local_img, local_txt, mask, patch_mask,
        pixel_target=model.patchify(clean_pixels),
        token_index=index,
        token_targets=ids.gather(1, index).masked_fill(~valid, -100),
    )  # fmt: skip


def answer_of(model, out: Tensor) -> Tensor:
    """RecNet output -> answer logits [B, A]."""
    return model.recnet.predict_answer(model.recnet.answer_hidden(out))


def reconstruction_terms(model, out: Tensor, view: MaskedView, answers: Tensor, plan: Plan, scope: str,
                         mean_count: MeanCount, answer_logits: Tensor | None = None) -> dict[str, Tensor]:  # fmt: skip
    """rec_{img,txt,ans}_{scope} (Eq. 5) from one RecNet pass."""
    terms = {}
    if "img" in plan.rec_heads:
        terms[f"rec_img_{scope}"] = masked_patch_mse(
            model.recnet.predict_pixels(out), view.pixel_target, view.patch_mask,
            norm_pix=model.cfg.norm_pix_loss, mean_count=mean_count,
        )  # fmt: skip
    if "txt" in plan.rec_heads:
        logits = model.recnet.predict_tokens(out, view.token_index)  # [B, K, V]
        terms[f"rec_txt_{scope}"] = masked_token_ce(logits, view.token_targets, mean_count=mean_count)
    if "ans" in plan.rec_heads:
        logits = answer_of(model, out) if answer_logits is None else answer_logits
        terms[f"rec_ans_{scope}"] = answer_ce(logits, answers, mean_count=mean_count)
    return terms


def domain_fused(model, images01: Tensor, batch: dict, cfg: Config, generator) -> Tensor:
    """h_F of the second domain view (see the module docstring).  -> [B, d]"""
    ops = cfg.perturbation.image_ops
    pick_light = uniform((images01.shape[0],), generator, images01.device) < 0.5
    light = perturb_images(images01, cfg.perturbation.light, ops, generator)
    other = perturb_images(images01, DOMAIN_SECOND_SEVERITY, ops, generator)
    pixels = model.normalize(torch.where(pick_light[:, None, None, None], light, other))
    h_img, _ = model.image_encoder(pixels, local=False)
    ids = batch.get("text_ids_light", batch["text_ids"])
    mask = batch.get("text_mask_light", batch["text_mask"])
    h_txt, _ = model.text_encoder(ids, mask, local=False)
    return model.fusion(h_img, h_txt)


def resilience_term(model, view: MaskedView, h_img: Tensor, h_txt: Tensor, full_answer_logits: Tensor,
                    answers: Tensor, cfg: Config, mean_count: MeanCount, generator) -> Tensor:  # fmt: skip
    """mod_resil on a random subset of round(p_drop * B) samples (>= 1), each missing its image
    or its text (50/50)."""
    b, device = answers.shape[0], answers.device
    k = max(1, round(cfg.loss.p_drop * b))
    sel = uniform((b,), generator, device).argsort()[:k]  # a random subset, no host sync
    drop_image = uniform((k,), generator, device) < 0.5
    drop_text = ~drop_image
    h = model.fusion(h_img[sel], h_txt[sel], drop_image, drop_text)
    out = model.recnet(h, view.local_img[sel], view.local_txt[sel], view.text_mask[sel],
                       drop_image=drop_image, drop_text=drop_text)  # fmt: skip
    return modality_resilience(
        answer_of(model, out), full_answer_logits[sel], answers[sel] >= 0,
        model.recnet.predict_pixels(out), view.pixel_target[sel], view.patch_mask[sel] & drop_image[:, None],
        model.recnet.predict_tokens(out, view.token_index[sel]),
        view.token_targets[sel].masked_fill(~drop_text[:, None], -100),
        norm_pix=model.cfg.norm_pix_loss, mean_count=mean_count,
    )  # fmt: skip


# --------------------------------------------------------------------------- pre-training


def pretrain_terms(model, batch: dict, cfg: Config, *, mean_count: MeanCount = identity_count,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:  # fmt: skip
    """CMDPI co-regularised pre-training + Robust-MMR terms; see the module docstring.
    ``generator`` (any device) drives every random draw of the step; None uses the global RNG."""
    plan = plan_passes("pretrain", cfg.loss)
    lc = cfg.loss
    images01 = model.to_unit(batch["image"])  # [B, 3, S, S] in [0, 1]
    ids, mask, answers = batch["text_ids"], batch["text_mask"], batch["answer"]
    is_caption = batch["is_caption"].bool()
    clean_pixels = model.normalize(images01)  # [B, 3, H, W]
    terms: dict[str, Tensor] = {}

    if plan.clean:  # Eq. 1
        h_img, _ = model.image_encoder(clean_pixels, local=False)
        h_txt, _ = model.text_encoder(ids, mask, local=False)
        h_fused = model.fusion(h_img, h_txt)
    if "con_inter" in plan.terms:  # Eq. 6
        terms["con_inter"] = symmetric_info_nce(
            model.image_encoder.embed(h_img), model.text_encoder.embed(h_txt), temperature=lc.temperature, valid=is_caption
        )
    if plan.masked:  # Eq. 2, asymmetric perturbation-aware masking
        view = masked_view(model, images01, clean_pixels, batch, cfg, generator)
    if plan.momentum:  # Eq. 6: online sees the masked/perturbed view, momentum the clean input
        target_img, target_txt = model.momentum_embed(clean_pixels, ids, mask)
        terms["con_intra"] = intra_info_nce(
            model.image_encoder.embed(view.h_img), target_img, model.text_encoder.embed(view.h_txt), target_txt,
            temperature=lc.temperature, valid=is_caption,
        )  # fmt: skip
    if plan.recnet_global:  # Eq. 2-5, global
        with torch.set_grad_enabled(plan.recnet_global_grad and torch.is_grad_enabled()):
            out = model.recnet(h_fused, view.local_img, view.local_txt, view.text_mask)
            full_answer_logits = answer_of(model, out) if ("ans" in plan.rec_heads or plan.dropped) else None
        if plan.recnet_global_grad:
            terms.update(reconstruction_terms(model, out, view, answers, plan, "global", mean_count, full_answer_logits))
    if plan.recnet_local:  # Eq. 2-5, local: the shared vector h~ replaces h_F
        out = model.recnet(None, view.local_img, view.local_txt, view.text_mask)
        terms.update(reconstruction_terms(model, out, view, answers, plan, "local", mean_count))
    if plan.domain_view:
        terms["dom_consist"] = domain_consistency(
            h_fused, domain_fused(model, images01, batch, cfg, generator), temperature=lc.temperature
        )
    if "mod_resil" in plan.terms:
        terms["mod_resil"] = (
            resilience_term(model, view, h_img, h_txt, full_answer_logits, answers, cfg, mean_count, generator)
            if plan.dropped
            else (h_fused * 0).sum()  # p_drop = 0: an exact 0 in the graph
        )

    terms = {name: terms[name] for name in plan.terms}
    terms["loss"] = _total(terms, PRETRAIN_TERMS, lc)
    return terms


# --------------------------------------------------------------------------- fine-tuning


def mixup_partner(answers: Tensor, organ: Tensor, question_type: Tensor, generator=None) -> tuple[Tensor, Tensor]:
    """For each sample, its head-mixup mate: a random other VQA sample with a known answer,
    preferring the same organ and question type (each compared only where the sample's own is
    known; CMDPI keeps both equal); itself when the batch has no other answered sample. Also
    whether the mate is such a strict match (False: a fallback, ``mix_fallback_rate``).
    -> (mate [B] int64, strict [B] bool)"""
    b, device = answers.shape[0], answers.device
    eye = torch.eye(b, dtype=torch.bool, device=device)
    anyone = (answers >= 0)[None, :] & ~eye
    same_organ = (organ[:, None] < 0) | (organ[:, None] == organ[None, :])
    same_type = (question_type[:, None] < 0) | (question_type[:, None] == question_type[None, :])
    strict = anyone & same_organ & same_type
    score = uniform((b, b), generator, device) + 2.0 * strict + 1.0 * anyone  # strict in [3,4), any in [1,2)
    score = score.masked_fill(~anyone, float("-inf")).masked_fill(eye, 0.5)
    mate = score.argmax(dim=1)
    return mate, strict.gather(1, mate[:, None]).squeeze(1)


def finetune_terms(model, batch: dict, cfg: Config, *, mean_count: MeanCount = identity_count,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:  # fmt: skip
    """CMDPI fine-tuning (difference reconstruction + head mixup), or the plain answer CE
    (``loss.w_ans_finetune``); see the module docstring. The batch's ``partner_image``,
    ``has_partner`` and ``partner_similarity`` (the loader's ``Partners``) give each sample's
    similar image; besides the terms, the measurements PARTNER_RATE, PARTNER_COS and
    MIX_FALLBACK_RATE."""
    plan = plan_passes("finetune", cfg.loss, cfg.finetune)
    lc, ft = cfg.loss, cfg.finetune
    images01 = model.to_unit(batch["image"])
    b, device = images01.shape[0], images01.device
    answers = batch["answer"]
    clean_pixels = model.normalize(images01)
    if cfg.perturbation.in_finetune:
        draw = asymmetric_draw(b, replace(cfg.masking, asymmetric=True), cfg.perturbation, generator, device)
        pixels = model.normalize(perturb_sides(images01, draw, cfg.perturbation.image_ops, generator))
        ids, mask = text_view(batch, draw)
        if cfg.perturbation.finetune_share < 1.0:  # the other samples are seen clean
            clean = uniform((b,), generator, device) >= cfg.perturbation.finetune_share
            pixels = torch.where(clean[:, None, None, None], clean_pixels, pixels)
            ids = torch.where(clean[:, None], batch["text_ids"], ids)
            mask = torch.where(clean[:, None], batch["text_mask"], mask)
    else:
        pixels, ids, mask = clean_pixels, batch["text_ids"], batch["text_mask"]
    terms: dict[str, Tensor] = {}

    h_img, local_img = model.image_encoder(pixels)  # Eq. 1
    h_txt, local_txt = model.text_encoder(ids, mask)
    h_fused = model.fusion(h_img, h_txt)
    if plan.answer_pass:
        out = model.recnet(h_fused, local_img, local_txt, mask)
        terms["rec_ans_global"] = answer_ce(answer_of(model, out), answers, mean_count=mean_count)
    measured: dict[str, Tensor] = {}
    if plan.diff_pass:  # the masked question H'_T
        token_mask = random_mask(maskable_tokens(ids, mask), cfg.masking.mask_ratio_txt, generator)
        _, local_txt_masked = model.text_encoder(apply_token_mask(ids, token_mask, model.mask_token_id), mask)
    if plan.deviated:  # Eq. 8: H~_I
        partner_local, has_partner = local_img, torch.zeros(b, dtype=torch.bool, device=device)
        if "partner_image" in batch:  # training batches; validation's split is not in the index
            has_partner = batch["has_partner"].bool()
            _, partner_local = model.image_encoder(model.preprocess(batch["partner_image"]))
            partner_local = torch.where(has_partner[:, None, None], partner_local, local_img)
            measured[PARTNER_RATE] = has_partner.float().mean()
            if "partner_similarity" in batch:
                cos = (batch["partner_similarity"].float() * has_partner).sum()
                measured[PARTNER_COS] = cos / has_partner.sum().clamp_min(1)
        deviated = deviate_features(local_img, partner_local, uniform((b,), generator, device))  # [B, N, d]
    if plan.diff_pass:  # Eq. 8-10
        out = model.recnet(h_fused, deviated, local_txt_masked, mask)
        if "diff_img" in plan.terms:
            every_patch = torch.ones(b, model.num_patches, dtype=torch.bool, device=device)
            terms["diff_img"] = masked_patch_mse(
                model.recnet.predict_pixels(out), model.patchify(clean_pixels), every_patch,
                norm_pix=model.cfg.norm_pix_loss, mean_count=mean_count,
            )  # fmt: skip
            index, valid = masked_positions(token_mask, max_masked_tokens(ids.shape[1], cfg.masking.mask_ratio_txt))
            terms["diff_txt"] = masked_token_ce(
                model.recnet.predict_tokens(out, index), ids.gather(1, index).masked_fill(~valid, -100),
                mean_count=mean_count,
            )  # fmt: skip
    if "mix" in plan.terms:  # Eq. 11-12
        if plan.whole_question_pass:  # the same deviated image features, the whole question
            out = model.recnet(h_fused, deviated, local_txt, mask)
        unknown = torch.full_like(answers, -1)
        mate, strict = mixup_partner(answers, batch.get("organ", unknown), batch.get("question_type", unknown),
                                     generator)  # fmt: skip
        answered = answers >= 0
        measured[MIX_FALLBACK_RATE] = (answered & ~strict).sum() / answered.sum().clamp_min(1)
        lam = sample_lambda(ft.mixup_dist, b, ft.mixup_beta_a, ft.mixup_beta_b, ft.mixup_fixed, generator, device)
        logits = model.recnet.predict_answer(mix_heads(model.recnet.answer_hidden(out), mate, lam))
        terms["mix"] = head_mixup_ce(logits, answers, mate, lam, mean_count=mean_count)

    terms = {name: terms[name] for name in plan.terms}
    terms["loss"] = _total(terms, FINETUNE_TERMS, lc)
    return {**terms, **measured}  # measurements after the loss: not loss terms
