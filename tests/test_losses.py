"""Loss terms, masking and samplers against values computed by hand on small tensors."""

import math

import pytest
import torch

from raymmr.config import MaskingConfig, PerturbationConfig
from raymmr.objective import losses as L
from raymmr.objective.masking import (
    apply_token_mask,
    asymmetric_draw,
    exact_counts,
    maskable_tokens,
    masked_positions,
    max_masked_tokens,
    random_mask,
)
from raymmr.objective.task import mixup_partner

torch.set_num_threads(1)


# --------------------------------------------------------------------------- reconstruction


def test_masked_patch_mse_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 3.0], [1.0, -1.0]]])  # [B=2, N=2, P=2]
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0]], [[1.0, 3.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    # masked patches: (1+4)/2 = 2.5, (4+0)/2 = 2, (0+4)/2 = 2 -> mean 6.5 / 3
    assert L.masked_patch_mse(pred, target, mask).item() == pytest.approx(6.5 / 3)


def test_masked_patch_mse_norm_pix_by_hand():
    pred = torch.zeros(1, 1, 4)
    target = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    mean, var = 2.5, torch.tensor([1.0, 2.0, 3.0, 4.0]).var().item()  # unbiased, as MAE
    normed = (torch.tensor([1.0, 2.0, 3.0, 4.0]) - mean) / math.sqrt(var + 1e-6)
    expected = normed.pow(2).mean().item()
    got = L.masked_patch_mse(pred, target, torch.ones(1, 1, dtype=torch.bool), norm_pix=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_masked_token_ce_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # [1, K=2, V=3]
    targets = torch.tensor([[0, -100]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert L.masked_token_ce(logits, targets).item() == pytest.approx(expected)


def test_answer_ce_ignores_captions():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    answers = torch.tensor([-100, 0])
    assert L.answer_ce(logits, answers).item() == pytest.approx(-math.log(0.75))


def test_masked_losses_normalise_by_the_global_count():
    """Two ranks: the average of the per-rank losses equals global sum / global count."""
    torch.manual_seed(0)
    preds = [torch.randn(2, 5, 3), torch.randn(2, 5, 3)]
    targets = [torch.randn(2, 5, 3), torch.randn(2, 5, 3)]
    masks = [torch.rand(2, 5) < 0.7, torch.rand(2, 5) < 0.2]
    counts = [m.sum().float() for m in masks]
    mean_count = lambda c: (counts[0] + counts[1]) / 2  # noqa: E731 - what all_reduce(sum)/world gives
    per_rank = [L.masked_patch_mse(p, t, m, mean_count=mean_count) for p, t, m in zip(preds, targets, masks)]
    sq = torch.cat([((p - t) ** 2).mean(-1)[m] for p, t, m in zip(preds, targets, masks)])
    assert (sum(per_rank) / 2).item() == pytest.approx(sq.mean().item(), rel=1e-5)


def test_zero_masked_count_gives_zero_not_nan():
    out = L.masked_token_ce(torch.randn(2, 3, 5), torch.full((2, 3), -100))
    assert out.item() == 0.0


# --------------------------------------------------------------------------- contrastive


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cosines: a0.b0=1, a0.b1=1/sqrt2, a1.b0=0, a1.b1=1/sqrt2
    tau = 0.5
    s = torch.tensor([[1.0, 2**-0.5], [0.0, 2**-0.5]]) / tau
    expected = -(torch.log_softmax(s, dim=1).diagonal()).mean()
    assert L.info_nce(a, b, temperature=tau).item() == pytest.approx(expected.item(), rel=1e-6)


def test_info_nce_symmetry_and_temperature():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    sym = L.symmetric_info_nce(a, b, temperature=0.1)
    assert sym.item() == pytest.approx(L.symmetric_info_nce(b, a, temperature=0.1).item(), rel=1e-6)
    assert sym.item() == pytest.approx(
        (L.info_nce(a, b, temperature=0.1) + L.info_nce(b, a, temperature=0.1)).item(), rel=1e-6
    )
    # a huge temperature flattens the softmax: each direction tends to log N
    assert L.info_nce(a, b, temperature=1e6).item() == pytest.approx(math.log(6), rel=1e-4)
    # cosine similarity: the scale of the inputs does not matter
    assert L.info_nce(3 * a, 0.5 * b, temperature=0.1).item() == pytest.approx(L.info_nce(a, b, temperature=0.1).item(), rel=1e-5)
    # aligned pairs at low temperature: loss -> 0
    assert L.info_nce(a, a, temperature=0.01).item() < 1e-3


def test_info_nce_valid_subset_equals_subset_loss():
    torch.manual_seed(1)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    valid = torch.tensor([True, False, True, True, False])
    got = L.info_nce(a, b, temperature=0.2, valid=valid)
    assert got.item() == pytest.approx(L.info_nce(a[valid], b[valid], temperature=0.2).item(), rel=1e-6)


@pytest.mark.parametrize("n_valid", [0, 1])
def test_info_nce_fewer_than_two_valid_is_exact_zero_in_graph(n_valid):
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3)
    valid = torch.zeros(4, dtype=torch.bool)
    valid[:n_valid] = True
    out = L.info_nce(a, b, temperature=0.1, valid=valid)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(a.grad, torch.zeros_like(a))


def test_intra_info_nce_no_gradient_to_momentum_side():
    torch.manual_seed(2)
    oi, ot = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    mi, mt = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    out = L.intra_info_nce(oi, mi, ot, mt, temperature=0.1)
    expected = L.info_nce(oi, mi, temperature=0.1) + L.info_nce(ot, mt, temperature=0.1)
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)
    out.backward()
    assert mi.grad is None and mt.grad is None and oi.grad is not None


def test_domain_consistency_prefers_matching_views():
    torch.manual_seed(3)
    a = torch.randn(8, 16)
    near = a + 0.01 * torch.randn(8, 16)
    far = near[torch.randperm(8)]
    assert L.domain_consistency(a, near, temperature=0.1) < L.domain_consistency(a, far, temperature=0.1)


# --------------------------------------------------------------------------- modality resilience


def test_answer_kl_by_hand_and_detached_reference():
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)  # p_ref = (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    out = L.answer_kl(logits, ref, torch.tensor([True]))
    assert out.item() == pytest.approx(expected)
    out.backward()
    assert ref.grad is None and logits.grad is not None
    assert L.answer_kl(ref.detach(), ref.detach(), torch.tensor([True])).item() == pytest.approx(0.0, abs=1e-7)


def test_modality_resilience_is_the_sum_of_its_parts():
    torch.manual_seed(4)
    args = dict(
        drop_answer_logits=torch.randn(3, 5), full_answer_logits=torch.randn(3, 5), answer_valid=torch.tensor([True, False, True]),
        pixel_pred=torch.randn(3, 4, 6), pixel_target=torch.randn(3, 4, 6), missing_image_patches=torch.rand(3, 4) < 0.5,
        token_logits=torch.randn(3, 2, 7), missing_text_targets=torch.tensor([[1, -100], [-100, -100], [3, 4]]),
    )  # fmt: skip
    out = L.modality_resilience(**args, norm_pix=True)
    expected = (
        L.answer_kl(args["drop_answer_logits"], args["full_answer_logits"], args["answer_valid"])
        + L.masked_patch_mse(args["pixel_pred"], args["pixel_target"], args["missing_image_patches"], norm_pix=True)
        + L.masked_token_ce(args["token_logits"], args["missing_text_targets"])
    )
    assert out.item() == pytest.approx(expected.item(), rel=1e-6)


# --------------------------------------------------------------------------- fine-tuning


def test_deviate_features_endpoints_and_mix():
    h, hp = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    assert torch.equal(L.deviate_features(h, hp, torch.ones(2)), h)
    assert torch.equal(L.deviate_features(h, hp, torch.zeros(2)), hp)
    eps = torch.tensor([0.25, 0.5])
    assert torch.allclose(L.deviate_features(h, hp, eps)[0], 0.25 * h[0] + 0.75 * hp[0])


def test_difference_reconstruction_with_eps_one_equals_plain_reconstruction():
    from raymmr.config import load_config
    from raymmr.model.recnet import RecNet

    torch.manual_seed(5)
    cfg = load_config("tiny").model
    net = RecNet(cfg, num_patches=4, vocab_size=11, num_answers=3).eval()
    h, local_img, partner = torch.randn(2, cfg.recnet_width), torch.randn(2, 4, cfg.recnet_width), torch.randn(2, 4, cfg.recnet_width)
    local_txt, mask = torch.randn(2, 5, cfg.recnet_width), torch.ones(2, 5, dtype=torch.long)
    target = torch.randn(2, 4, 3 * cfg.patch_size**2)
    every = torch.ones(2, 4, dtype=torch.bool)

    def loss(local):
        return L.masked_patch_mse(net.predict_pixels(net(h, local, local_txt, mask)), target, every, norm_pix=True)

    plain = loss(local_img)
    assert loss(L.deviate_features(local_img, partner, torch.ones(2))).item() == plain.item()
    assert loss(L.deviate_features(local_img, partner, torch.full((2,), 0.3))).item() != plain.item()


def test_head_mixup_targets_sum_to_one_and_mix():
    answers = torch.tensor([0, 2, 1])
    partner = torch.tensor([1, 0, 2])
    lam = torch.tensor([0.25, 1.0, 0.5])
    t = L.mixup_targets(answers, partner, lam, num_answers=4)
    assert torch.allclose(t.sum(-1), torch.ones(3))
    assert torch.allclose(t[0], torch.tensor([0.25, 0.0, 0.75, 0.0]))
    assert torch.allclose(t[1], torch.tensor([0.0, 0.0, 1.0, 0.0]))
    assert torch.allclose(t[2], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # its own partner: a plain one-hot


def test_mix_heads_is_linear():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = L.mix_heads(h, torch.tensor([1, 0]), torch.tensor([0.75, 0.5]))
    assert torch.allclose(out, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


def test_head_mixup_ce_by_hand_and_lambda_one_is_plain_ce():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    answers = torch.tensor([0, 1])
    partner = torch.tensor([1, 0])
    lam = torch.tensor([0.5, 1.0])
    # row 0: targets (0.5, 0.5), p = (0.75, 0.25); row 1: target (0, 1), p = (0.5, 0.5)
    expected = (-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)) - math.log(0.5)) / 2
    assert L.head_mixup_ce(logits, answers, partner, lam).item() == pytest.approx(expected)
    ones = torch.ones(2)
    assert L.head_mixup_ce(logits, answers, partner, ones).item() == pytest.approx(L.answer_ce(logits, answers).item())


def test_head_mixup_skips_unanswered_rows():
    logits = torch.randn(3, 4)
    answers = torch.tensor([1, -100, 2])
    partner = torch.tensor([2, 0, 0])
    got = L.head_mixup_ce(logits, answers, partner, torch.ones(3))
    assert got.item() == pytest.approx(L.answer_ce(logits, answers).item(), rel=1e-6)


# --------------------------------------------------------------------------- lambda samplers


def test_uniform_lambda_moments():
    x = L.sample_lambda("uniform", 200_000, generator=torch.Generator().manual_seed(0))
    assert x.mean().item() == pytest.approx(0.5, abs=0.005)
    assert x.var().item() == pytest.approx(1 / 12, abs=0.002)
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("a,b", [(0.2, 0.2), (0.4, 0.4), (2.0, 2.0), (0.2, 1.0), (1.0, 0.2)])
def test_beta_lambda_moments(a, b):
    x = L.sample_lambda("beta", 100_000, a, b, generator=torch.Generator().manual_seed(1))
    assert x.mean().item() == pytest.approx(a / (a + b), abs=0.01)
    assert x.var().item() == pytest.approx(a * b / ((a + b) ** 2 * (a + b + 1)), rel=0.05)
    assert torch.isfinite(x).all() and 0.0 <= x.min() and x.max() <= 1.0


def test_fixed_lambda_and_determinism():
    assert torch.equal(L.sample_lambda("fixed", 5, fixed=0.3), torch.full((5,), 0.3))
    draw = lambda: L.sample_lambda("beta", 7, 0.4, 0.4, generator=torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(draw(), draw())
    with pytest.raises(ValueError):
        L.sample_lambda("gauss", 3)


# --------------------------------------------------------------------------- masking


def test_random_mask_exact_counts_per_sample_ratio():
    g = torch.Generator().manual_seed(0)
    available = torch.ones(4, 10, dtype=torch.bool)
    available[1, 6:] = False  # 6 available
    available[3, 1:] = False  # 1 available: nothing may be masked (one kept)
    ratio = torch.tensor([0.75, 0.5, 0.15, 0.9])
    mask = random_mask(available, ratio, g)
    assert mask.sum(1).tolist() == [8, 3, 2, 0]  # round(7.5)=8, round(3)=3, round(1.5)=2, clamp(n-1)=0
    assert not (mask & ~available).any()
    assert ((available & ~mask).sum(1) >= 1).all()  # at least one kept
    assert exact_counts(torch.tensor([0.99]), torch.tensor([10])).item() == 9  # at most n - 1


def test_random_mask_is_random_but_deterministic():
    available = torch.ones(2, 50, dtype=torch.bool)
    m1 = random_mask(available, 0.5, torch.Generator().manual_seed(0))
    m2 = random_mask(available, 0.5, torch.Generator().manual_seed(0))
    m3 = random_mask(available, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)


def test_special_and_pad_tokens_never_masked():
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0], [2, 10, 4, 11, 12, 13, 3]])
    attn = (ids != 0).long()
    attn[1] = 1
    maskable = maskable_tokens(ids, attn, special_ids=(4,))
    assert maskable.tolist() == [
        [False, True, True, True, False, False, False],
        [False, True, False, True, True, True, False],
    ]
    for seed in range(20):
        mask = random_mask(maskable, 0.9, torch.Generator().manual_seed(seed))
        masked_ids = apply_token_mask(ids, mask, mask_token_id=4)
        assert (masked_ids[:, 0] == 2).all() and masked_ids[0, 4] == 3 and masked_ids[1, 6] == 3
        assert (masked_ids[0, 5:] == 0).all()
        assert mask.sum(1).tolist() == [2, 3]  # round(0.9 * 3) = 3 -> clamp 2; round(0.9 * 4) = 4 -> clamp 3


def test_masked_positions_order_and_restore():
    mask = torch.tensor([[False, True, False, True, True], [True, False, False, False, False]])
    index, valid = masked_positions(mask, 3)
    assert index[0].tolist() == [1, 3, 4] and valid[0].all()
    assert index[1, 0].item() == 0 and valid[1].tolist() == [True, False, False]
    # scattering the gathered values back restores every masked position
    values = torch.arange(10).view(2, 5)
    picked = values.gather(1, index)
    restored = torch.full_like(values, -1).scatter(1, index, picked)
    assert torch.equal(restored[mask], values[mask])


@pytest.mark.parametrize("length", [4, 7, 32, 64, 77])
@pytest.mark.parametrize("ratio", [0.15, 0.5, 0.75, 0.99])
def test_max_masked_tokens_bounds_every_count(length, ratio):
    k = max_masked_tokens(length, ratio)
    n = torch.arange(0, length - 1)  # possible maskable counts
    assert exact_counts(torch.full_like(n, ratio, dtype=torch.float32), n).max().item() <= k <= length


def test_asymmetric_draw_sides_and_ratios():
    masking = MaskingConfig(mask_ratio_high=0.8, mask_ratio_low=0.1, p_img_side=0.3)
    d = asymmetric_draw(20_000, masking, PerturbationConfig(), torch.Generator().manual_seed(0))
    assert d.image_strong.float().mean().item() == pytest.approx(0.3, abs=0.015)
    assert torch.equal(d.ratio_img, torch.where(d.image_strong, 0.8, 0.1))
    assert torch.equal(d.ratio_txt, torch.where(d.image_strong, 0.1, 0.8))
    assert d.perturb and d.strong == "strong" and d.light == "light"
    sym = asymmetric_draw(3, MaskingConfig(asymmetric=False, mask_ratio_img=0.6, mask_ratio_txt=0.2), PerturbationConfig())
    assert not sym.perturb and torch.allclose(sym.ratio_img, torch.full((3,), 0.6)) and torch.allclose(sym.ratio_txt, torch.full((3,), 0.2))


# --------------------------------------------------------------------------- partners


def test_mixup_partner_prefers_same_organ_and_type():
    answers = torch.tensor([1, 2, 3, 4, -100])
    organ = torch.tensor([0, 0, 1, -1, 0])
    qtype = torch.tensor([5, 5, 5, 6, 5])
    for seed in range(10):
        p, strict = mixup_partner(answers, organ, qtype, torch.Generator().manual_seed(seed))
        assert p[0].item() == 1 and p[1].item() == 0  # strict match
        assert p[2].item() in (0, 1, 3)  # no strict match: any answered sample, never the caption
        assert p[3].item() in (0, 1, 2)  # organ unknown: only the question type (6) counts; none -> any
        assert p[4].item() in (0, 1)  # an unanswered row still gets an answered partner
        assert strict.tolist() == [True, True, False, False, True]
    p, strict = mixup_partner(torch.tensor([3, -100]), torch.tensor([0, 0]), torch.tensor([0, 0]))
    assert p.tolist() == [0, 0] and strict.tolist() == [False, True]  # alone: itself, not a strict match
