"""GlobalFusion and the reconstruction network (CMDPI Eq. 1, 3, 4).

    h_F = GlobalFusion(h_I, h_T) = FFN([h_I; h_T])                          [B, d]
    v_0 = [h, H_I, H_T, a] + pos + type                                      [B, 1 + N + L + 1, d]
    v_l+1 = LN(FFN(LN(MHA(v_l) + v_l)) + ...)   post-LN, GELU  (Eq. 3)
    Output_I = FFN_I(H_o[:, 1:N+1])   [B, N, p*p*3]
    Output_T = FFN_T(H_o[:, N+1:N+L+1] at the masked positions only)   [B, K, V]
    Ans'     = FFN_A(H_o[:, -1])      [B, A]

``h`` is h_F (global reconstruction), the shared trainable vector h~ (local reconstruction,
``h=None``) or a fusion computed with one modality missing. ``a`` is a learned answer slot:
CMDPI reads the answer at the last position (Eq. 4), so the slot is appended after the text.

Modality resilience (Robust-MMR): ``drop_image`` / ``drop_text`` replace a sample's H_I / H_T by
learned "missing" tokens (and GlobalFusion replaces h_I / h_T by learned missing vectors). A
dropped text's padding is ignored: all L slots are attended, since its true length is unknown.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from raymmr.config import ModelConfig

# Segment types for the type embedding.
TYPE_GLOBAL, TYPE_IMAGE, TYPE_TEXT, TYPE_ANSWER = 0, 1, 2, 3


class HeadFFN(nn.Sequential):
    """FFN_I / FFN_T / FFN_A: Linear -> GELU -> LN -> Linear (a BERT-style prediction head)."""

    def __init__(self, width: int, out: int):
        super().__init__(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, out))


class GlobalFusion(nn.Module):
    """h_F = FFN([h_I; h_T]) (Eq. 1), ending in a LayerNorm so h_F enters the RecNet at the scale
    of the projected local features."""

    def __init__(self, image_width: int, text_width: int, width: int, dropout: float):
        super().__init__()
        self.ffn = nn.Sequential(
            nn.Linear(image_width + text_width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.LayerNorm(width),
        )
        self.missing_image = nn.Parameter(torch.zeros(image_width))  # stands in for h_I when dropped
        self.missing_text = nn.Parameter(torch.zeros(text_width))
        nn.init.trunc_normal_(self.missing_image, std=0.02)
        nn.init.trunc_normal_(self.missing_text, std=0.02)

    def forward(self, h_img: Tensor, h_txt: Tensor, drop_image: Tensor | None = None, drop_text: Tensor | None = None):
        """h_img [B, W_img], h_txt [B, W_txt], drop_*: [B] bool or None -> h_F [B, d]"""
        if drop_image is not None:
            h_img = torch.where(drop_image[:, None], self.missing_image.to(h_img.dtype), h_img)
        if drop_text is not None:
            h_txt = torch.where(drop_text[:, None], self.missing_text.to(h_txt.dtype), h_txt)
        return self.ffn(torch.cat([h_img, h_txt], dim=-1))


class RecNet(nn.Module):
    def __init__(self, cfg: ModelConfig, *, num_patches: int, vocab_size: int, num_answers: int):
        super().__init__()
        d = cfg.recnet_width
        self.num_patches = num_patches
        self.max_text_len = cfg.max_text_len
        # --- slots and tokens
        self.local_global = nn.Parameter(torch.zeros(1, d))  # h~ of local reconstruction (Eq. 2)
        self.answer_slot = nn.Parameter(torch.zeros(1, 1, d))  # a
        self.missing_image = nn.Parameter(torch.zeros(1, 1, d))  # replaces H_I when the image is dropped
        self.missing_text = nn.Parameter(torch.zeros(1, 1, d))
        # --- positions: learned per segment, plus a segment type embedding
        self.pos_global = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_image = nn.Parameter(torch.zeros(1, num_patches, d))
        self.pos_text = nn.Parameter(torch.zeros(1, cfg.max_text_len, d))
        self.pos_answer = nn.Parameter(torch.zeros(1, 1, d))
        self.type_embed = nn.Embedding(4, d)
        for p in (self.local_global, self.answer_slot, self.missing_image, self.missing_text,
                  self.pos_global, self.pos_image, self.pos_text, self.pos_answer):  # fmt: skip
            nn.init.trunc_normal_(p, std=0.02)
        nn.init.trunc_normal_(self.type_embed.weight, std=0.02)
        # --- post-LN Transformer with GELU (Eq. 3); attention runs through SDPA
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d, cfg.recnet_heads, 4 * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=False
            )
            for _ in range(cfg.recnet_layers)
        )
        self.grad_checkpointing = cfg.gradient_checkpointing
        # --- heads (Eq. 4)
        self.head_image = HeadFFN(d, 3 * cfg.patch_size**2)  # FFN_I
        self.head_text = HeadFFN(d, vocab_size)  # FFN_T
        self.head_answer = HeadFFN(d, num_answers)  # FFN_A

    def forward(
        self,
        h: Tensor | None,
        local_img: Tensor,
        local_txt: Tensor,
        text_mask: Tensor,
        *,
        drop_image: Tensor | None = None,
        drop_text: Tensor | None = None,
    ) -> Tensor:
        """h: [B, d] or None (h~); local_img: [B, N, d]; local_txt: [B, L, d]; text_mask: [B, L] (1 = real).
        -> H_o [B, 1 + N + L + 1, d]"""
        b, n, d = local_img.shape
        length = local_txt.shape[1]
        dtype = local_img.dtype
        if h is None:
            h = self.local_global.to(dtype).expand(b, d)
        pad = text_mask == 0  # [B, L] True = ignored key
        if drop_image is not None:
            local_img = torch.where(drop_image[:, None, None], self.missing_image.to(dtype), local_img)
        if drop_text is not None:
            local_txt = torch.where(drop_text[:, None, None], self.missing_text.to(dtype), local_txt)
            pad = pad & ~drop_text[:, None]
        types = self.type_embed.weight.to(dtype)  # [4, d]
        x = torch.cat(
            [
                h[:, None] + self.pos_global + types[TYPE_GLOBAL],
                local_img + self.pos_image + types[TYPE_IMAGE],
                local_txt + self.pos_text[:, :length] + types[TYPE_TEXT],
                self.answer_slot.expand(b, 1, d) + self.pos_answer + types[TYPE_ANSWER],
            ],
            dim=1,
        ).to(dtype)  # [B, T, d], T = 1 + N + L + 1
        keep = torch.zeros(b, 1 + n, dtype=torch.bool, device=x.device)
        pad = torch.cat([keep, pad, keep[:, :1]], dim=1)  # [B, T] True = ignored key
        for layer in self.layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, None, pad, use_reentrant=False)
            else:
                x = layer(x, src_key_padding_mask=pad)
        return x

    def borrowed_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(reader, parameter) pairs read outside their owner's forward: ``forward`` reads the type
        table without calling ``type_embed``, and ``nn.MultiheadAttention`` passes its
        ``out_proj`` weights to the functional kernel without calling ``out_proj``."""
        pairs = [(self, self.type_embed.weight)]
        for layer in self.layers:
            attn = layer.self_attn
            pairs += [(attn, p) for p in (attn.out_proj.weight, attn.out_proj.bias) if p is not None]
        return pairs

    # --- heads -----------------------------------------------------------------------------

    def predict_pixels(self, out: Tensor) -> Tensor:
        """H_o -> Output_I [B, N, p*p*3]"""
        return self.head_image(out[:, 1 : 1 + self.num_patches])

    def predict_tokens(self, out: Tensor, index: Tensor) -> Tensor:
        """H_o, index [B, K] of text positions -> vocabulary logits [B, K, V] at those positions only."""
        text = out[:, 1 + self.num_patches : -1]  # [B, L, d]
        picked = text.gather(1, index[..., None].expand(-1, -1, text.shape[-1]))  # [B, K, d]
        return self.head_text(picked)

    def answer_hidden(self, out: Tensor) -> Tensor:
        """H_o -> the answer slot's hidden state h_D [B, d] (mixed by head mixup, Eq. 11)."""
        return out[:, -1]

    def predict_answer(self, hidden: Tensor) -> Tensor:
        """[B, d] -> answer logits [B, A]"""
        return self.head_answer(hidden)
