"""RaymmrModel: CMDPI's three modules (image encoder, text encoder, RecNet) + momentum encoders.

Modules and shapes only: the losses and the per-step passes live in ``raymmr.objective``.

    images uint8 [B, 3, S, S] --preprocess--> pixels [B, 3, H, W] (CLIP-normalised, H = image_size)
    h_I, H_I = image_encoder(pixels, patch_mask)      [B, W_img], [B, N, d]
    h_T, H_T = text_encoder(ids, mask)                [B, W_txt], [B, L, d]
    h_F      = fusion(h_I, h_T)                       [B, d]
    H_o      = recnet(h_F | None, H_I, H_T, mask)     [B, 1 + N + L + 1, d]
    z_I, z_T = image_encoder.embed(h_I), text_encoder.embed(h_T)   [B, embed_dim], L2-normalised

The momentum encoders (EMA copies of both towers with their projections, MoCo-style) give the
targets of intra-modality contrast; they never receive gradients and the trainer updates them
after every optimizer step (``raymmr.train.momentum.MomentumEMA``, in fp32 under bf16 too).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raymmr.config import Config, ModelConfig
from raymmr.model.encoders import CLIP_MEAN, CLIP_STD, ImageEncoder, TextEncoder
from raymmr.model.export import local_export, read_export, save_export
from raymmr.model.recnet import GlobalFusion, RecNet

# Parameters that are learned vectors/tokens rather than weights (never decayed).
TOKEN_PARAMS = {"pos_embed", "cls_token", "reg_token", "mask_token", "local_global", "answer_slot",
                "missing_image", "missing_text", "pos_global", "pos_image", "pos_text", "pos_answer"}  # fmt: skip


class RaymmrModel(nn.Module):
    def __init__(
        self,
        model_cfg: ModelConfig,
        *,
        vocab_size: int,
        num_answers: int,
        pad_token_id: int,
        mask_token_id: int,
        towers: dict | None = None,
    ):
        """``towers`` (from ``tower_spec()``, stored in exports) rebuilds the exact tower
        architectures with random weights, ignoring ``image_pretrained`` / ``text_pretrained``."""
        super().__init__()
        if num_answers < 0:
            raise ValueError(f"num_answers {num_answers}: must be >= 0")
        # 0: a shard set without VQA answers (captions only, a pre-training corpus); the answer head
        # then has no output, and a fine-tuning from this export gets its rows fresh (train.initial_weights).
        if mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; masked-token reconstruction needs one")
        self.cfg = model_cfg
        self.vocab_size, self.num_answers = vocab_size, num_answers
        self.pad_token_id, self.mask_token_id = pad_token_id, mask_token_id
        # --- encoders (Eq. 1)
        towers = towers or {}
        self.image_encoder = ImageEncoder(model_cfg, towers.get("image_architecture"))
        self.text_encoder = TextEncoder(model_cfg, vocab_size, pad_token_id, towers.get("text_config"))
        # --- momentum encoders (Eq. 6, C_intra): EMA copies, no gradients
        self.momentum_image_encoder = copy.deepcopy(self.image_encoder).requires_grad_(False)
        self.momentum_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        # --- fusion and reconstruction network (Eq. 1, 3, 4)
        self.fusion = GlobalFusion(self.image_encoder.width, self.text_encoder.width, model_cfg.recnet_width, model_cfg.dropout)
        self.recnet = RecNet(
            model_cfg, num_patches=self.image_encoder.num_patches, vocab_size=vocab_size, num_answers=num_answers
        )
        self._init_fresh_modules()
        # --- image normalisation constants (not saved: they are fixed)
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def _init_fresh_modules(self) -> None:
        """Linear layers that are new to this model (projections, fusion, RecNet) get the ViT/BERT
        init (trunc-normal 0.02, zero bias); the towers keep their own (or pretrained) init."""
        fresh = [self.fusion, self.recnet, self.image_encoder.proj_global, self.image_encoder.proj_local,
                 self.text_encoder.proj_global, self.text_encoder.proj_local]  # fmt: skip
        for module in fresh:
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
        self.sync_momentum()

    # --- shapes ------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def num_patches(self) -> int:
        return self.image_encoder.num_patches

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    # --- pixels ------------------------------------------------------------------------------

    @staticmethod
    def to_unit(images: Tensor) -> Tensor:
        """uint8 [B, 3, S, S] -> float [B, 3, S, S] in [0, 1] (float input is taken as already in [0, 1])."""
        return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()

    def normalize(self, images01: Tensor) -> Tensor:
        """[0, 1] images at any size -> CLIP-normalised pixels at ``image_size``.  [B, 3, H, W]"""
        if images01.shape[-1] != self.image_size or images01.shape[-2] != self.image_size:
            images01 = F.interpolate(
                images01, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        return (images01 - self.pixel_mean) / self.pixel_std

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (or [0, 1] float) images -> normalised pixels at the model's size."""
        return self.normalize(self.to_unit(images))

    def patchify(self, pixels: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, N, p*p*3], row-major patches, (p, p, c) inside a patch as in MAE."""
        p = self.patch_size
        b, c, h, w = pixels.shape
        x = pixels.reshape(b, c, h // p, p, w // p, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, patches: Tensor) -> Tensor:
        """[B, N, p*p*3] -> [B, 3, H, W]"""
        p = self.patch_size
        b, n, _ = patches.shape
        g = int(n**0.5)
        x = patches.reshape(b, g, g, p, p, 3)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, 3, g * p, g * p)

    def tower_spec(self) -> dict:
        """What rebuilds the towers' architectures offline (see ``towers`` in ``__init__``)."""
        return {
            "image_architecture": self.image_encoder.architecture,
            "text_config": self.text_encoder.model.config.to_dict(),
        }

    # --- momentum encoders -------------------------------------------------------------------

    def _momentum_pairs(self):
        return [(self.image_encoder, self.momentum_image_encoder), (self.text_encoder, self.momentum_text_encoder)]

    def momentum_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(online, momentum) parameter pairs; the trainer's ``MomentumEMA`` updates the second
        from the first after every optimizer step (``raymmr.train.momentum``)."""
        return [pair for enc, mom in self._momentum_pairs()
                for pair in zip(enc.parameters(), mom.parameters(), strict=True)]

    @torch.no_grad()
    def sync_momentum(self) -> None:
        """Copy the online encoders into the momentum ones (at init, and after loading an export
        that, being for inference, does not carry the momentum copies)."""
        for enc, mom in self._momentum_pairs():
            mom.load_state_dict(enc.state_dict())

    @torch.no_grad()
    def momentum_embed(self, pixels: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Momentum targets ĥ_I, ĥ_T in the contrastive space.  -> [B, E], [B, E] (L2-normalised)"""
        h_img, _ = self.momentum_image_encoder(pixels, local=False)
        h_txt, _ = self.momentum_text_encoder(ids, mask, local=False)
        return self.momentum_image_encoder.embed(h_img), self.momentum_text_encoder.embed(h_txt)

    # --- inference API (contract) ------------------------------------------------------------

    def encode_image(self, images: Tensor) -> Tensor:
        """uint8 [B, 3, S, S] -> [B, embed_dim], L2-normalised global image embedding."""
        h, _ = self.image_encoder(self.preprocess(images), local=False)
        return self.image_encoder.embed(h)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """[B, L] ids and mask -> [B, embed_dim], L2-normalised global text embedding."""
        h, _ = self.text_encoder(ids, mask, local=False)
        return self.text_encoder.embed(h)

    def answer_logits(self, images: Tensor, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        """Eq. 1 + Eq. 4 on clean, unmasked input: FFN_A(RecNet(h_F, H_I, H_T)[:, -1]).  -> [B, A]"""
        h_img, local_img = self.image_encoder(self.preprocess(images))
        h_txt, local_txt = self.text_encoder(text_ids, text_mask)
        out = self.recnet(self.fusion(h_img, h_txt), local_img, local_txt, text_mask)
        return self.recnet.predict_answer(self.recnet.answer_hidden(out))

    def forward(self, images: Tensor, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        return self.answer_logits(images, text_ids, text_mask)

    # --- exports -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_url: str, *, device: str | torch.device = "cpu") -> RaymmrModel:
        """The model of a raymmr export (``raymmr.model.export``), in eval mode: a local folder or
        storage URL holding model.safetensors, or a run folder with an ``export/`` inside."""
        model, _, _ = load_export(local_export(path_or_url), device=device)
        return model

    def save_pretrained(self, out_dir, *, config, tokenizer, answers: list[str]):
        """Write an export of this model into the local folder ``out_dir``: ``config`` is the run's
        ``raymmr.config.Config``, ``tokenizer`` a tokenizer.json (or its folder, or a loaded Hugging
        Face tokenizer), ``answers`` the answer vocabulary. Returns the folder's path."""
        return save_export(self, config, out_dir, tokenizer=tokenizer, answers=answers)

    # --- trainer API -------------------------------------------------------------------------

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs where ``module.forward`` reads a parameter owned by one of its
        children outside the child's own forward; a parameter-sharding trainer (ZeRO-3) registers
        them so they are gathered when ``module`` runs."""
        readers = (self.image_encoder, self.momentum_image_encoder, self.text_encoder, self.momentum_text_encoder,
                   self.recnet)
        return [pair for reader in readers for pair in reader.borrowed_parameters()]

    def no_weight_decay(self) -> set[str]:
        """Names of trainable parameters without weight decay: biases and norm weights (ndim <= 1),
        embedding tables, position embeddings and learned tokens/slots."""
        out = set()
        for module_name, module in self.named_modules():
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad and (p.ndim <= 1 or isinstance(module, nn.Embedding) or name in TOKEN_PARAMS):
                    out.add(f"{module_name}.{name}" if module_name else name)
        return out


def load_export(export_dir, device: str | torch.device = "cpu") -> tuple[RaymmrModel, Config, dict]:
    """-> (model in eval mode, config, meta) of a local export folder (``raymmr.model.export``); meta
    as ``read_export`` gives it. The towers are rebuilt from the stored architectures and the
    weights come from the export, never from model.image_pretrained / text_pretrained (which may
    name a download)."""
    cfg, meta, state = read_export(export_dir)
    model_cfg = replace(cfg.model, image_pretrained="", text_pretrained="")
    model = RaymmrModel(model_cfg, towers=meta["towers"], **{k: meta[k] for k in
                        ("vocab_size", "num_answers", "pad_token_id", "mask_token_id")})  # fmt: skip
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg, meta
