"""CMDPI fine-tuning's wiring: where head mixup reads h_D (``finetune.mix_source``) and how often its
mate is a fallback (``mix_fallback_rate``)."""

import pytest
import torch
from test_model import make_batch, make_model, tiny

from raymmr.objective.task import MIX_FALLBACK_RATE, finetune_terms, mixup_partner

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    return make_model(tiny()).eval()  # eval: no dropout, so two runs differ only where the test says


def run(model, cfg, batch, shift_masked: bool = False):
    """The fine-tuning terms (no grad, a fixed generator) and the positions the diff pass masked
    [B, L] bool. ``shift_masked``: the whole question's local features H_T are moved at exactly
    those positions (the positions come from an identical earlier run: same generator)."""
    calls, masked = [], []

    def hook(module, args, output):
        calls.append(args[0])
        if shift_masked and len(calls) == 1:  # the view pass, the whole question
            h, local = output
            return h, local + 3.0 * masked[0][..., None]

    if shift_masked:
        masked.append(run(model, cfg, batch)[1])
    handle = model.text_encoder.register_forward_hook(hook)
    try:
        with torch.no_grad():
            terms = finetune_terms(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    whole, diff = calls[0], calls[1]  # the view pass, then the diff pass's masked question
    return terms, (diff == model.mask_token_id) & (whole != model.mask_token_id)


@pytest.mark.parametrize("source", ["diff", "whole_question"])
def test_mix_reads_the_tokens_the_diff_pass_masked_only_with_whole_question(model, source):
    """With mix_source=whole_question, L_mix depends on the local features of the question tokens that
    the diff pass masked (the answer head sees the whole question); with "diff" it does not. The
    difference reconstruction terms come from the masked pass either way."""
    cfg = tiny("perturbation.in_finetune=false", f"finetune.mix_source={source}")
    batch = make_batch(cfg, n_caption=0)
    plain, masked = run(model, cfg, batch)
    assert masked.sum() >= 4  # the diff pass masked some question tokens
    shifted, _ = run(model, cfg, batch, shift_masked=True)
    assert shifted["diff_img"] == plain["diff_img"] and shifted["diff_txt"] == plain["diff_txt"]
    if source == "diff":
        assert shifted["mix"] == plain["mix"]
    else:
        assert abs(shifted["mix"].item() - plain["mix"].item()) > 1e-4


# A hand-made batch: organ, question type (-1 = unknown) and answer (-100 = none) of 8 VQA samples.
ORGAN = [0, 0, 1, -1, 0, 2, 2, -1]
QTYPE = [5, 5, 5, 6, 5, 7, 8, -1]
ANSWER = [1, 2, 3, 4, -100, 0, 1, 2]
# 0 and 1 match each other; 2 (organ 1), 3 (type 6), 5 (type 7) and 6 (type 8) have no match; 4 is
# unanswered (not counted; its mate 0 or 1 matches); 7 knows neither, so any mate matches.
STRICT = [True, True, False, False, True, False, False, True]
FALLBACKS, ANSWERED = 4, 7


def test_mixup_partner_says_which_mates_are_strict_matches():
    for seed in range(5):
        mate, strict = mixup_partner(torch.tensor(ANSWER), torch.tensor(ORGAN), torch.tensor(QTYPE),
                                     torch.Generator().manual_seed(seed))  # fmt: skip
        assert strict.tolist() == STRICT
        assert all(m != i and ANSWER[m] >= 0 for i, m in enumerate(mate.tolist()))


def test_mix_fallback_rate_is_the_share_of_answered_samples_without_a_strict_mate(model):
    cfg = tiny()
    batch = make_batch(cfg, n_caption=0)
    batch.update(organ=torch.tensor(ORGAN), question_type=torch.tensor(QTYPE), answer=torch.tensor(ANSWER))
    with torch.no_grad():
        terms = finetune_terms(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert terms[MIX_FALLBACK_RATE].item() == pytest.approx(FALLBACKS / ANSWERED)
    assert terms["loss"].item() == pytest.approx((terms["mix"] + terms["diff_img"] + terms["diff_txt"]).item())
