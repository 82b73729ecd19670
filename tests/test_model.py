"""The full model on the tiny preset: one pre-training and one fine-tuning step, gradients,
term selection by weight, FLOP count, momentum and weight-decay groups."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from raymmr.config import load_config
from raymmr.model.model import RaymmrModel
from raymmr.objective.flops import training_flops_per_sample
from raymmr.objective.task import (
    FINETUNE_TERMS,
    MIX_FALLBACK_RATE,
    PARTNER_COS,
    PARTNER_RATE,
    PRETRAIN_TERMS,
    finetune_terms,
    plan_passes,
    pretrain_terms,
)

torch.set_num_threads(1)

VOCAB, ANSWERS, BATCH = 200, 12, 8
# Trainable parameters that fine-tuning legitimately leaves without gradient: the image mask
# token (no image masking), the contrastive projections (no contrastive term), and the
# modality-resilience / local-reconstruction vectors (pre-training only).
FINETUNE_UNUSED = {
    "image_encoder.mask_token",
    "image_encoder.proj_global.weight",
    "text_encoder.proj_global.weight",
    "fusion.missing_image",
    "fusion.missing_text",
    "recnet.local_global",
    "recnet.missing_image",
    "recnet.missing_text",
}


MEASURED = {PARTNER_RATE, PARTNER_COS, MIX_FALLBACK_RATE}  # returned beside the terms, not weighted
EQ13 = {"mix", "diff_img", "diff_txt"}
PLAIN_FINETUNE = ("loss.w_mix=0", "loss.w_diff=0", "loss.w_ans_finetune=1")  # the cmdpi_finetune arm's values


def tiny(*overrides):
    return load_config("tiny", list(overrides))


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    return RaymmrModel(cfg.model, vocab_size=VOCAB, num_answers=ANSWERS, pad_token_id=0, mask_token_id=4)


def text_batch(g, b, length):
    """[CLS]=2 ... [SEP]=3 then [PAD]=0, random lengths."""
    ids = torch.randint(5, VOCAB, (b, length), generator=g)
    lengths = torch.randint(4, length + 1, (b,), generator=g)
    pos = torch.arange(length)[None]
    mask = (pos < lengths[:, None]).long()
    ids = torch.where(pos == 0, 2, ids)
    ids = torch.where(pos == lengths[:, None] - 1, 3, ids)
    return ids.masked_fill(mask == 0, 0), mask


def make_batch(cfg, n_caption=4, seed=0):
    """A batch as the loader builds it (contract): captions first, then VQA samples."""
    g = torch.Generator().manual_seed(seed)
    b, s, length = BATCH, cfg.data.image_size, cfg.model.max_text_len
    batch = {"image": torch.randint(0, 256, (b, 3, s, s), dtype=torch.uint8, generator=g)}
    for suffix in ("", "_strong", "_light"):
        batch[f"text_ids{suffix}"], batch[f"text_mask{suffix}"] = text_batch(g, b, length)
    is_caption = torch.arange(b) < n_caption
    batch["is_caption"] = is_caption
    batch["answer"] = torch.where(is_caption, -100, torch.randint(0, ANSWERS, (b,), generator=g))
    batch["answer_type"] = torch.where(is_caption, -1, torch.randint(0, 2, (b,), generator=g))
    batch["question_type"] = torch.where(is_caption, -1, torch.randint(0, 2, (b,), generator=g))
    batch["organ"] = torch.where(is_caption, -1, torch.randint(0, 3, (b,), generator=g))
    batch["domain"] = torch.randint(0, 3, (b,), generator=g)
    batch["skipped"] = torch.tensor(0)
    batch["key"] = [f"s{i}" for i in range(b)]
    return batch


def with_partners(batch, seed=1):
    """The loader's partner images: half the samples have one, at cosine 0.8."""
    g = torch.Generator().manual_seed(seed)
    batch = dict(batch)
    batch["partner_image"] = torch.randint(0, 256, batch["image"].shape, dtype=torch.uint8, generator=g)
    batch["has_partner"] = torch.arange(len(batch["key"])) % 2 == 0
    batch["partner_similarity"] = torch.where(batch["has_partner"], 0.8, 0.0)
    return batch


@pytest.fixture(scope="module")
def cfg():
    return tiny()


@pytest.fixture(scope="module")
def model(cfg):
    return make_model(cfg)


def missing_grads(model):
    return {n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)}


def test_pretrain_step_produces_every_term_and_gradient(model, cfg):
    model.zero_grad(set_to_none=True)
    terms = pretrain_terms(model, make_batch(cfg), cfg, generator=torch.Generator().manual_seed(0))
    assert set(terms) == set(PRETRAIN_TERMS) | {"loss"}
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    expected = sum(getattr(cfg.loss, PRETRAIN_TERMS[k]) * v for k, v in terms.items() if k != "loss")
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["loss"].backward()
    assert missing_grads(model) == set()
    # the momentum encoders never train
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("momentum_"))


@pytest.mark.parametrize("mix_source", ["diff", "whole_question"])
def test_finetune_step_produces_every_term_and_gradient(model, mix_source):
    cfg = tiny("loss.w_mix=0.5", f"finetune.mix_source={mix_source}")
    model.zero_grad(set_to_none=True)
    batch = with_partners(make_batch(cfg, n_caption=0))
    terms = finetune_terms(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    assert set(terms) == EQ13 | {"loss"} | MEASURED
    assert terms[PARTNER_RATE].item() == pytest.approx(0.5) and terms[PARTNER_COS].item() == pytest.approx(0.8)
    assert 0 <= terms[MIX_FALLBACK_RATE].item() <= 1
    assert all(torch.isfinite(v) for v in terms.values())
    expected = sum(getattr(cfg.loss, FINETUNE_TERMS[k]) * v for k, v in terms.items() if k in FINETUNE_TERMS)
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    terms["loss"].backward()
    assert missing_grads(model) == FINETUNE_UNUSED


def test_plain_finetune_step_is_the_answer_ce_alone(model):
    """The cmdpi_finetune ablation arm: rec_ans_global on the unmasked view, no partner image."""
    cfg = tiny(*PLAIN_FINETUNE)
    model.zero_grad(set_to_none=True)
    terms = finetune_terms(model, with_partners(make_batch(cfg, n_caption=0)), cfg)
    assert set(terms) == {"rec_ans_global", "loss"}
    terms["loss"].backward()
    assert "recnet.head_answer.0.weight" not in missing_grads(model)


@pytest.mark.parametrize(
    "weight,removed",
    [
        ("w_img", {"rec_img_global", "rec_img_local"}),
        ("w_txt", {"rec_txt_global", "rec_txt_local"}),
        ("w_ans", {"rec_ans_global", "rec_ans_local"}),
        ("w_con_inter", {"con_inter"}),
        ("w_con_intra", {"con_intra"}),
        ("w_dom_consist", {"dom_consist"}),
        ("w_mod_resil", {"mod_resil"}),
    ],
)
def test_zero_weight_removes_its_pretrain_term(model, weight, removed):
    cfg = tiny(f"loss.{weight}=0")
    terms = pretrain_terms(model, make_batch(cfg), cfg, generator=torch.Generator().manual_seed(0))
    assert set(terms) == (set(PRETRAIN_TERMS) - removed) | {"loss"}


def test_finetune_objective_is_cmdpi_eq13_by_default(model):
    """L_ft = L_mix + L_diff on every preset; pre-training's answer weight does not reach fine-tuning."""
    assert load_config("base").loss.w_ans_finetune == 0 and tiny().loss.w_ans_finetune == 0
    cfg = tiny()
    terms = finetune_terms(model, make_batch(cfg, n_caption=0), cfg)
    assert set(terms) - MEASURED == EQ13 | {"loss"}
    no_pretrain_answer = tiny("loss.w_ans=0")
    assert plan_passes("finetune", no_pretrain_answer.loss) == plan_passes("finetune", cfg.loss)


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_finetune_share_leaves_the_other_samples_clean(model, share):
    """With perturbation.in_finetune, a finetune_share of the samples enters the encoders
    perturbed (one side strongly, the other lightly) and the rest exactly as loaded."""
    cfg = tiny(f"perturbation.finetune_share={share}")
    batch = with_partners(make_batch(cfg, n_caption=0))
    seen = []
    hook = model.image_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        finetune_terms(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    clean = (seen[0] == model.normalize(model.to_unit(batch["image"]))).flatten(1).all(dim=1)  # the view pass
    assert clean.all() if share == 0 else (not clean.any() if share == 1 else clean.any() and not clean.all())


@pytest.mark.parametrize("weight,kept", [("w_diff", {"mix"}), ("w_mix", {"diff_img", "diff_txt"})])
def test_zero_weight_removes_its_finetune_term(model, weight, kept):
    cfg = tiny(f"loss.{weight}=0")
    terms = finetune_terms(model, make_batch(cfg, n_caption=0), cfg)
    assert set(terms) - MEASURED == kept | {"loss"}


def test_only_contrastive_and_mod_resil_weights_still_run(model):
    """mod_resil without any reconstruction weight still has its reference pass (without grad)."""
    cfg = tiny("loss.w_img=0", "loss.w_txt=0", "loss.w_ans=0", "loss.w_dom_consist=0")
    terms = pretrain_terms(model, make_batch(cfg), cfg)
    assert set(terms) == {"con_inter", "con_intra", "mod_resil", "loss"}
    assert torch.isfinite(terms["loss"])


def test_contrastive_terms_are_zero_with_fewer_than_two_captions(model, cfg):
    """VQA samples never enter an image-text contrastive term (docs/SPEC.md §1); dom_consist (a view-to-view
    term of the fused representation) keeps them: a decision, README "Decisions"."""
    terms = pretrain_terms(model, make_batch(cfg, n_caption=1), cfg)
    contrastive = ("con_inter", "con_intra")
    assert all(terms[t].item() == 0.0 and terms[t].requires_grad for t in contrastive)
    assert terms["dom_consist"].item() > 0
    terms["loss"].backward()  # the graph is intact


def test_symmetric_masking_without_perturbation(model):
    cfg = tiny("masking.asymmetric=false", "perturbation.in_finetune=false")
    terms = pretrain_terms(model, make_batch(cfg), cfg)
    assert torch.isfinite(terms["loss"])
    assert torch.isfinite(finetune_terms(model, make_batch(cfg, 0), cfg)["loss"])


def test_mean_count_is_called_the_same_way_whatever_the_data(model, cfg):
    """mean_count is a collective: ranks with different data must call it equally often."""
    calls = []

    def mean_count(count):
        calls.append(tuple(count.shape))
        return count

    pretrain_terms(model, make_batch(cfg, n_caption=8), cfg, mean_count=mean_count)
    all_caption = list(calls)
    calls.clear()
    pretrain_terms(model, make_batch(cfg, n_caption=0, seed=1), cfg, mean_count=mean_count)
    assert calls == all_caption and len(calls) > 0


def test_masked_terms_divide_by_mean_count(model, cfg):
    batch = make_batch(cfg)
    one = pretrain_terms(model, batch, cfg, generator=torch.Generator().manual_seed(0))
    half = pretrain_terms(model, batch, cfg, mean_count=lambda c: 2 * c, generator=torch.Generator().manual_seed(0))
    for name in ("rec_img_global", "rec_txt_local", "rec_ans_global"):
        assert half[name].item() == pytest.approx(one[name].item() / 2, rel=1e-5)
    assert half["con_inter"].item() == pytest.approx(one["con_inter"].item(), rel=1e-6)  # a batch mean


def test_step_is_deterministic_given_the_generator(model, cfg):
    batch = make_batch(cfg)
    a = pretrain_terms(model, batch, cfg, generator=torch.Generator().manual_seed(5))
    b = pretrain_terms(model, batch, cfg, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stage,overrides", [("pretrain", ()), ("finetune", ()),
                                             ("finetune", ("finetune.mix_source=whole_question",)),
                                             ("finetune", ("finetune.mix_source=whole_question", "loss.w_diff=0")),
                                             ("finetune", PLAIN_FINETUNE)])  # fmt: skip
def test_flops_per_sample_matches_flop_counter(model, stage, overrides):
    cfg = tiny(*overrides)
    batch = make_batch(cfg, n_caption=4 if stage == "pretrain" else 0)
    model.zero_grad(set_to_none=True)
    # The math SDPA backend decomposes attention into matmuls that FlopCounterMode sees on CPU.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if stage == "pretrain":
            terms = pretrain_terms(model, batch, cfg)
        else:
            terms = finetune_terms(model, with_partners(batch), cfg)
        terms["loss"].backward()
    counted = counter.get_total_flops() / BATCH
    analytic = training_flops_per_sample(model, stage, cfg.loss, cfg.masking, cfg.finetune)
    assert analytic == pytest.approx(counted, rel=0.10)


def test_whole_question_mix_source_counts_one_more_recnet_pass(model):
    """The FLOP count reads the plan: mix_source=whole_question adds one RecNet pass (forward + backward)."""
    from raymmr.objective.flops import _Shapes

    diff, whole = tiny(), tiny("finetune.mix_source=whole_question")
    assert plan_passes("finetune", whole.loss, whole.finetune).whole_question_pass
    assert not plan_passes("finetune", diff.loss, diff.finetune).whole_question_pass
    flops = [training_flops_per_sample(model, "finetune", c.loss, c.masking, c.finetune) for c in (diff, whole)]
    assert flops[1] - flops[0] == pytest.approx(3 * _Shapes(model).recnet())


def test_flops_drop_when_terms_are_switched_off(model, cfg):
    full = training_flops_per_sample(model, "pretrain", cfg.loss, cfg.masking)
    lean = tiny("loss.w_dom_consist=0", "loss.w_con_intra=0", "loss.w_mod_resil=0")
    assert training_flops_per_sample(model, "pretrain", lean.loss, lean.masking) < 0.8 * full


def test_momentum_ema_in_fp32_training():
    from raymmr.train.momentum import MomentumEMA

    cfg = tiny("model.momentum=0.9")
    m = make_model(cfg)
    online = m.image_encoder.proj_global.weight
    target = m.momentum_image_encoder.proj_global.weight
    assert torch.equal(online, target)  # synced at init
    ema = MomentumEMA(m, zero3=False)
    assert ema.fp32 and ema.ema is None  # in fp32 the parameters are the EMA
    before = target.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
    ema.update()
    assert torch.allclose(target, 0.9 * before + 0.1 * online.detach(), atol=1e-6)
    assert not target.requires_grad
    assert len(m.momentum_pairs()) == len(list(m.image_encoder.parameters())) + len(list(m.text_encoder.parameters()))


def test_no_weight_decay_names(model):
    names = model.no_weight_decay()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names <= trainable
    for expected in ("image_encoder.vit.pos_embed", "image_encoder.vit.cls_token", "image_encoder.mask_token",
                     "recnet.local_global", "recnet.answer_slot", "recnet.pos_text", "recnet.type_embed.weight",
                     "text_encoder.model.embeddings.token_embedding.weight", "recnet.layers.0.norm1.weight",
                     "image_encoder.vit.blocks.0.attn.qkv.bias"):  # fmt: skip
        assert expected in names, expected
    for decayed in ("image_encoder.vit.patch_embed.proj.weight", "image_encoder.vit.blocks.0.attn.qkv.weight",
                    "recnet.layers.0.linear1.weight", "recnet.head_text.3.weight"):  # fmt: skip
        assert decayed not in names, decayed


def test_inference_api_shapes(model, cfg):
    batch = make_batch(cfg)
    model.eval()
    with torch.no_grad():
        z_img = model.encode_image(batch["image"])
        z_txt = model.encode_text(batch["text_ids"], batch["text_mask"])
        logits = model.answer_logits(batch["image"], batch["text_ids"], batch["text_mask"])
    model.train()
    assert z_img.shape == z_txt.shape == (BATCH, cfg.model.embed_dim)
    assert torch.allclose(z_img.norm(dim=-1), torch.ones(BATCH), atol=1e-5)
    assert logits.shape == (BATCH, ANSWERS)


def test_images_are_resized_to_the_model_size(model):
    cfg = tiny("data.image_size=96")
    batch = make_batch(cfg)
    assert batch["image"].shape[-1] == 96
    assert torch.isfinite(pretrain_terms(model, batch, cfg)["loss"])


def test_bert_text_tower_and_gradient_checkpointing():
    cfg = tiny("model.text_model=bert", "model.gradient_checkpointing=true")
    m = make_model(cfg)
    terms = pretrain_terms(m, make_batch(cfg), cfg)
    terms["loss"].backward()
    assert missing_grads(m) == set()


def test_patchify_round_trip(model, cfg):
    x = torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size)
    patches = model.patchify(x)
    p = cfg.model.patch_size
    assert patches.shape == (2, model.num_patches, 3 * p * p)
    assert torch.equal(patches[0, 1].view(p, p, 3), x[0, :, :p, p : 2 * p].permute(1, 2, 0))  # row-major, (p, p, c)
    assert torch.equal(model.unpatchify(patches), x)


def test_fine_tuning_init_carries_answer_rows_by_answer(tmp_path, cfg):
    """Another answer vocabulary: each answer the export knows keeps its trained row, whatever its
    position; new answers get fresh rows; everything else loads as it is."""
    import json

    from safetensors.torch import save_file

    from raymmr.train.initial_weights import load_initial_weights

    pretrained = RaymmrModel(cfg.model, vocab_size=VOCAB, num_answers=3, pad_token_id=0, mask_token_id=4)
    save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "answers.json").write_text(json.dumps(["yes", "no", "liver"]))
    torch.manual_seed(1)
    model = RaymmrModel(cfg.model, vocab_size=VOCAB, num_answers=4, pad_token_id=0, mask_token_id=4)
    fresh = model.recnet.head_answer[-1].weight.detach().clone()
    report = load_initial_weights(model, str(tmp_path), 0, ["liver", "kidney", "yes", "lung"])
    old, new = pretrained.recnet.head_answer[-1], model.recnet.head_answer[-1]
    assert torch.equal(new.weight[0], old.weight[2]) and torch.equal(new.bias[2], old.bias[0])
    assert torch.equal(new.weight[1], fresh[1]) and torch.equal(new.weight[3], fresh[3])
    assert report["answers_carried"] == 2 and report["answers_new"] == ["kidney", "lung"]
    assert report["reinitialised"] == [] and report["missing"] == [] and report["unexpected"] == []
    assert torch.equal(model.fusion.ffn[0].weight, pretrained.fusion.ffn[0].weight)


def test_difference_reconstruction_reads_the_partner_image(model):
    """diff_img changes with a partner's pixels only where the sample has a partner; without
    partners it reconstructs from the sample's own features. (Every input perturbed, as this test
    was written for: an untrained RecNet moves its reconstruction only a little with its input.)"""
    cfg = tiny("perturbation.finetune_share=1.0")
    batch = make_batch(cfg, n_caption=0)
    g = torch.Generator().manual_seed

    def diff(b):
        with torch.no_grad():
            return finetune_terms(model.eval(), b, cfg, generator=g(0))["diff_img"].item()

    own = diff(batch)
    none = with_partners(batch)
    none["has_partner"] = torch.zeros_like(none["has_partner"])
    assert diff(none) == pytest.approx(own, rel=1e-6)
    assert diff(with_partners(batch)) != pytest.approx(own, rel=1e-3)
    model.train()


def test_base_preset_has_cmdpis_parameter_count():
    """CMDPI: "approximately 194 million parameters". The base preset with CLIP's vocabulary (49,408
    tokens + the added mask) and 500 answers, momentum copies not counted: 190.4M."""
    cfg = load_config("base")
    model = RaymmrModel(cfg.model, vocab_size=49409, num_answers=500, pad_token_id=0, mask_token_id=49408)
    trained = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("momentum_"))
    assert 185e6 < trained < 200e6, trained


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_compiled_step_equals_eager(cfg, device):
    """train.compile: the towers and RecNet under torch.compile (inductor) give the same
    pre-training terms and gradients as eager, on the same random draws (fp32)."""
    import copy

    from raymmr.train.setup import compile_model

    eager = make_model(cfg).to(device)
    compiled = compile_model(copy.deepcopy(eager), tiny("train.compile=true"))
    assert compiled.recnet._compiled_call_impl is not None and eager.recnet._compiled_call_impl is None
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in make_batch(cfg).items()}
    results = []
    for model in (eager, compiled):
        terms = pretrain_terms(model, batch, cfg, generator=torch.Generator(device).manual_seed(3))
        terms["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in terms.items() if torch.is_tensor(v) and v.dim() == 0}, grads))
    (eager_terms, eager_grads), (compiled_terms, compiled_grads) = results
    assert eager_terms.keys() == compiled_terms.keys() and eager_grads.keys() == compiled_grads.keys()
    for k in eager_terms:
        torch.testing.assert_close(compiled_terms[k], eager_terms[k], rtol=1e-4, atol=1e-5, msg=k)
    for n in eager_grads:
        torch.testing.assert_close(compiled_grads[n], eager_grads[n], rtol=1e-3, atol=1e-5, msg=n)
