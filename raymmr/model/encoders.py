"""Image and text towers (CMDPI Eq. 1): each returns a global vector h and local features H.

    h_I, H_I = ImageEncoder(Input_I)     h_I: [B, W_img] pooled [CLS];  H_I: [B, N, d] patch tokens
    h_T, H_T = TextEncoder(Input_T)      h_T: [B, W_txt] pooled token;  H_T: [B, L, d] every position

``d`` is ``recnet_width``: the local features are projected to the RecNet's width (docs/SPEC.md §2). The
global vectors stay at the tower width; ``embed(h)`` maps them into the L2-normalised contrastive
space of width ``embed_dim`` (CLIP's projection heads; initialised fresh even when the towers
are CLIP-initialised, because ``embed_dim`` is a free config value).

Masked input (Eq. 2) is SimMIM-style for images: a masked patch's embedding is replaced by a
learned mask token *after* the patch embedding and before the position embedding, so every
sample keeps all N tokens and per-sample mask ratios cost nothing extra. Masked text tokens are
replaced by the tokenizer's mask id before the text tower (``masking.apply_token_mask``).

Attention runs through ``F.scaled_dot_product_attention`` in both towers (timm ``fused_attn``,
transformers ``attn_implementation="sdpa"``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import checkpoint_seq
from torch import Tensor, nn

from raymmr import storage
from raymmr.config import ConfigError, ModelConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Checkpoint file names looked for, in this order, when model.image_pretrained is a directory.
IMAGE_WEIGHT_FILES = (
    "model.safetensors",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


# --------------------------------------------------------------------------- image tower


def create_image_tower(cfg: ModelConfig, architecture: str | None = None) -> nn.Module:
    """A timm ViT sized by the config, randomly initialised or loaded from ``image_pretrained``:

    - ``architecture`` given (rebuilding an export): that timm architecture, random init, no loading;
    - ``''``: random init;
    - ``hub:<name>``: timm's own pretrained download (``hub:timm/vit_base_patch16_clip_224.openai``
      goes through ``hf-hub:``; ``hub:vit_base_patch16_clip_224.openai`` is a timm tag);
    - a local file or directory: see ``load_image_weights``.
    """
    kwargs = dict(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.image_width,
        depth=cfg.image_layers,
        num_heads=cfg.image_heads,
        num_classes=0,
    )
    if architecture is not None:
        return timm.create_model(architecture, pretrained=False, **kwargs)
    source = cfg.image_pretrained
    if source.startswith("hub:"):
        name = source[len("hub:") :]
        return timm.create_model(f"hf-hub:{name}" if "/" in name else name, pretrained=True, **kwargs)
    vit = timm.create_model(cfg.image_model, pretrained=False, **kwargs)
    if source:
        load_image_weights(vit, storage.local_source(source, "pretrained"))
    return vit


def load_image_weights(vit: nn.Module, source: str) -> None:
    """Load a timm / OpenCLIP / OpenAI-CLIP checkpoint file (or a directory holding one) into ``vit``.

    The state dict goes through the model family's timm ``checkpoint_filter_fn`` (OpenAI/OpenCLIP
    key conversion, position-embedding and patch-embedding resampling to our image/patch size),
    exactly as ``pretrained_cfg_overlay=dict(file=...)`` would. We call it ourselves so the load is
    strict: timm's own path loads non-strictly whenever ``num_classes`` differs from the
    checkpoint's, which would silently keep random weights for a wrong checkpoint. The classifier /
    CLIP projection (``head.*``) is dropped: our towers end at the pooled feature.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / f for f in IMAGE_WEIGHT_FILES if (path / f).is_file()]
        if not found:
            raise FileNotFoundError(f"model.image_pretrained={source}: no {' / '.join(IMAGE_WEIGHT_FILES)} there")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(
            f"model.image_pretrained={source}: not a file or directory (use 'hub:<name>' for timm downloads)"
        )
    state = timm.models.load_state_dict(str(path))
    filter_fn = getattr(sys.modules[type(vit).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, vit)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    own = vit.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ConfigError(f"model.image_pretrained={source}: shapes differ from the configured tower: {wrong[:5]}")
    missing, unexpected = vit.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"model.image_pretrained={source} does not fit model.image_model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


class ImageEncoder(nn.Module):
    """timm ViT -> (h_I [B, W_img], H_I [B, N, d]) with an optional SimMIM patch mask."""

    def __init__(self, cfg: ModelConfig, architecture: str | None = None):
        super().__init__()
        # --- tower
        self.vit = create_image_tower(cfg, architecture)
        width = self.vit.embed_dim
        self.num_patches = self.vit.patch_embed.num_patches
        if cfg.gradient_checkpointing:
            self.vit.set_grad_checkpointing(True)
        # --- masking and projections
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.proj_global = nn.Linear(width, cfg.embed_dim, bias=False)  # h_I -> contrastive space
        self.proj_local = nn.Linear(width, cfg.recnet_width)  # patch tokens -> H_I

    @property
    def width(self) -> int:
        return self.vit.embed_dim

    @property
    def architecture(self) -> str:
        """The timm architecture name, enough to rebuild the tower without its weights' source."""
        return self.vit.pretrained_cfg.get("architecture") or type(self.vit).__name__

    def forward(self, pixels: Tensor, patch_mask: Tensor | None = None, *, local: bool = True):
        """pixels: [B, 3, H, W] normalised; patch_mask: [B, N] bool (True = masked) or None.
        -> (h [B, W_img], H [B, N, d] or None when ``local`` is False)"""
        vit = self.vit
        x = vit.patch_embed(pixels.to(self.mask_token.dtype))  # [B, N, W]
        if patch_mask is not None:
            x = torch.where(patch_mask[..., None], self.mask_token.to(x.dtype), x)
        x = vit._pos_embed(x)  # [B, 1 + N, W]: [CLS] + patches, + pos
        x = vit.norm_pre(vit.patch_drop(x))
        if vit.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_seq(vit.blocks, x)
        else:
            x = vit.blocks(x)
        x = vit.norm(x)
        h = vit.forward_head(x, pre_logits=True)  # [B, W] pooled [CLS]
        return h, (self.proj_local(x[:, vit.num_prefix_tokens :]) if local else None)

    def embed(self, h: Tensor) -> Tensor:
        """[B, W_img] -> [B, embed_dim], L2-normalised."""
        return F.normalize(self.proj_global(h), dim=-1)

    def borrowed_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(reader, parameter): parameters of ``self.vit`` that ``forward`` reads without calling
        ``vit.forward`` (``_pos_embed`` uses the class/register tokens and position table
        directly). Sharded trainers gather them with the reader (DeepSpeed ZeRO-3 external
        parameters)."""
        names = ("cls_token", "reg_token", "pos_embed")
        return [(self, p) for p in (getattr(self.vit, n, None) for n in names) if isinstance(p, nn.Parameter)]


# --------------------------------------------------------------------------- text tower


def create_text_tower(cfg: ModelConfig, vocab_size: int, pad_token_id: int, hf_config: dict | None = None) -> nn.Module:
    """A transformers CLIPTextModel ("clip") or BertModel ("bert"): ``from_pretrained(text_pretrained)``
    when set (its token embeddings resized to ``vocab_size`` if the tokenizer differs), else random
    init with the config's sizes and the tokenizer's vocabulary. ``hf_config`` (the tower's own
    transformers config as a dict, saved in exports) rebuilds exactly that tower, randomly
    initialised, without touching ``text_pretrained``."""
    from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

    kind = cfg.text_model
    if hf_config is not None:
        config = (CLIPTextConfig if kind == "clip" else BertConfig).from_dict(hf_config)
        config._attn_implementation = "sdpa"
        model = CLIPTextModel(config) if kind == "clip" else BertModel(config, add_pooling_layer=False)
    elif cfg.text_pretrained:
        cls = CLIPTextModel if kind == "clip" else BertModel
        extra = {} if kind == "clip" else {"add_pooling_layer": False}
        source = storage.local_source(cfg.text_pretrained, "pretrained")  # a bucket's copy, in the cache
        model = cls.from_pretrained(source, attn_implementation="sdpa", **extra)
        got = (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads)
        want = (cfg.text_width, cfg.text_layers, cfg.text_heads)
        if got != want:
            raise ConfigError(
                f"model.text_pretrained={cfg.text_pretrained} has (width, layers, heads)={got} but the config says "
                f"{want}; set model.text_width/text_layers/text_heads to match"
            )
        if model.config.max_position_embeddings < cfg.max_text_len:
            raise ConfigError(
                f"model.max_text_len={cfg.max_text_len} exceeds the {model.config.max_position_embeddings} "
                f"positions of {cfg.text_pretrained}"
            )
        if model.get_input_embeddings().num_embeddings != vocab_size:
            model.resize_token_embeddings(vocab_size)
    else:
        sizes = dict(
            vocab_size=vocab_size,
            hidden_size=cfg.text_width,
            intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_text_len,
            pad_token_id=pad_token_id,
        )
        if kind == "clip":
            # bos/eos only steer CLIP's own pooler, which we do not read; keep them inside the vocabulary
            config = CLIPTextConfig(**sizes, bos_token_id=None, eos_token_id=pad_token_id)
        else:
            config = BertConfig(**sizes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config._attn_implementation = "sdpa"
        model = CLIPTextModel(config) if kind == "clip" else BertModel(config, add_pooling_layer=False)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


class TextEncoder(nn.Module):
    """transformers text tower -> (h_T [B, W_txt], H_T [B, L, d]).

    h_T is CLIP's pooled token (the last real token, <eot>/[SEP]; CLIP's tower is causal, so only
    that position has seen the whole text) or BERT's first token ([CLS]). We pool from the
    attention mask rather than by token id, so the same code serves any tokenizer."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_token_id: int, hf_config: dict | None = None):
        super().__init__()
        self.kind = cfg.text_model
        self.model = create_text_tower(cfg, vocab_size, pad_token_id, hf_config)
        width = self.model.config.hidden_size
        self.proj_global = nn.Linear(width, cfg.embed_dim, bias=False)
        self.proj_local = nn.Linear(width, cfg.recnet_width)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def forward(self, ids: Tensor, mask: Tensor, *, local: bool = True):
        """ids, mask: [B, L] int64 (mask 1 = real token) -> (h [B, W_txt], H [B, L, d] or None)"""
        x = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, W]
        if self.kind == "clip":
            last = (mask.sum(1) - 1).clamp_min(0)
            h = x[torch.arange(x.shape[0], device=x.device), last]
        else:
            h = x[:, 0]
        return h, (self.proj_local(x) if local else None)

    def embed(self, h: Tensor) -> Tensor:
        """[B, W_txt] -> [B, embed_dim], L2-normalised."""
        return F.normalize(self.proj_global(h), dim=-1)

    def borrowed_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(reader, parameter) pairs read outside their owner's forward: CLIP's embeddings module
        checks the size of its position table before calling it (see ImageEncoder)."""
        emb = getattr(self.model, "embeddings", None) or getattr(getattr(self.model, "text_model", None), "embeddings", None)
        table = getattr(emb, "position_embedding", None)
        return [(emb, table.weight)] if self.kind == "clip" and table is not None else []
