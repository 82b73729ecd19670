"""Analytic training FLOPs per sample, for throughput and MFU.

Matmul FLOPs only (2·m·n·k; embeddings, norms, softmax and elementwise ops are noise), counted
from the model's real shapes for every pass ``task.plan_passes`` says a step runs: 3x (forward +
backward) on paths that receive gradients, 1x on grad-free ones (momentum encoders; the global
RecNet pass when it only serves as mod_resil's reference). Attention counts the full L x L score
matrix, as SDPA computes it (causal CLIP text included). Checked against
``torch.utils.flop_counter.FlopCounterMode`` in tests/test_model.py.
"""

from __future__ import annotations

from raymmr.config import FinetuneConfig, LossConfig, MaskingConfig
from raymmr.objective.masking import max_masked_tokens, max_text_ratio
from raymmr.objective.task import plan_passes


def transformer_layer(tokens: int, width: int, mlp: int) -> float:
    """qkv + out projections, MLP, and the two attention matmuls of one layer, forward."""
    t, w = tokens, width
    return 8 * t * w * w + 4 * t * w * mlp + 4 * t * t * w


class _Shapes:
    def __init__(self, model):
        cfg = model.cfg
        vit = model.image_encoder.vit
        text = model.text_encoder.model.config
        self.n, self.p = model.num_patches, cfg.patch_size
        self.wi, self.li, self.mi = vit.embed_dim, len(vit.blocks), vit.blocks[0].mlp.fc1.out_features
        self.prefix = vit.num_prefix_tokens
        self.wt, self.lt, self.mt = text.hidden_size, text.num_hidden_layers, text.intermediate_size
        self.length = cfg.max_text_len
        self.d, self.lr = cfg.recnet_width, cfg.recnet_layers
        self.e, self.v, self.a = cfg.embed_dim, model.vocab_size, model.num_answers

    def image(self, *, local: bool, proj: bool) -> float:
        f = 2 * self.n * 3 * self.p**2 * self.wi + self.li * transformer_layer(self.n + self.prefix, self.wi, self.mi)
        return f + local * 2 * self.n * self.wi * self.d + proj * 2 * self.wi * self.e

    def text(self, *, local: bool, proj: bool) -> float:
        f = self.lt * transformer_layer(self.length, self.wt, self.mt)
        return f + local * 2 * self.length * self.wt * self.d + proj * 2 * self.wt * self.e

    def fusion(self) -> float:
        return 2 * (self.wi + self.wt) * self.d + 2 * self.d * self.d

    def recnet(self) -> float:
        return self.lr * transformer_layer(self.n + self.length + 2, self.d, 4 * self.d)

    def head(self, out: int, positions: int) -> float:
        return positions * (2 * self.d * self.d + 2 * self.d * out)

    def heads(self, names, k_text: int) -> float:
        sizes = {"img": (3 * self.p**2, self.n), "txt": (self.v, k_text), "ans": (self.a, 1)}
        return sum(self.head(*sizes[h]) for h in names)


def training_flops_per_sample(model, stage: str, loss_cfg: LossConfig, masking_cfg: MaskingConfig,
                              finetune_cfg: FinetuneConfig | None = None) -> float:
    """FLOPs per sample of one ``stage`` step (``finetune_cfg``: which passes head mixup adds; None:
    its defaults)."""
    plan = plan_passes(stage, loss_cfg, finetune_cfg)
    s = _Shapes(model)
    grad = 0.0  # forward FLOPs of passes that are back-propagated
    no_grad = 0.0
    if stage == "pretrain":
        k = max_masked_tokens(s.length, max_text_ratio(masking_cfg))
        inter, intra = "con_inter" in plan.terms, "con_intra" in plan.terms
        if plan.clean:
            grad += s.image(local=False, proj=inter) + s.text(local=False, proj=inter) + s.fusion()
        if plan.masked:
            grad += s.image(local=True, proj=intra) + s.text(local=True, proj=intra)
        if plan.momentum:
            no_grad += s.image(local=False, proj=True) + s.text(local=False, proj=True)
        if plan.recnet_global:
            if plan.recnet_global_grad:
                grad += s.recnet() + s.heads(plan.rec_heads | ({"ans"} if plan.dropped else set()), k)
            else:
                no_grad += s.recnet() + s.heads({"ans"}, k)
        if plan.recnet_local:
            grad += s.recnet() + s.heads(plan.rec_heads, k)
        if plan.domain_view:
            grad += s.image(local=False, proj=False) + s.text(local=False, proj=False) + s.fusion()
        if plan.dropped:
            grad += loss_cfg.p_drop * (s.fusion() + s.recnet() + s.heads(("img", "txt", "ans"), k))
    else:
        k = max_masked_tokens(s.length, masking_cfg.mask_ratio_txt)
        grad += s.image(local=True, proj=False) + s.text(local=True, proj=False) + s.fusion()
        if plan.answer_pass:
            grad += s.recnet() + s.heads(("ans",), k)
        if plan.deviated:  # the partner image
            grad += s.image(local=True, proj=False)
        if plan.diff_pass:  # the masked question, RecNet
            grad += s.text(local=True, proj=False) + s.recnet()
            grad += s.heads(("img", "txt"), k) if "diff_img" in plan.terms else 0.0
        if plan.whole_question_pass:  # RecNet again, on the whole question
            grad += s.recnet()
        grad += s.heads(("ans",), k) if "mix" in plan.terms else 0.0
    return float(3 * grad + no_grad)
