"""Predictor: answers and embeddings from an export directory, for PIL images and strings.

Images are brought to the shards' size the way the shard writer does (RGB, bicubic, aspect not
kept), then the model resizes to ``model.image_size`` if that differs, as in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from raymmr.model.export import load_export, local_export


def _load_tokenizer(path: str):
    try:
        from raymmr.data.tokenizer import encode_texts, load_tokenizer  # noqa: PLC0415
    except ImportError:  # the data package is optional for inference
        from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

        tok = PreTrainedTokenizerFast(tokenizer_file=path, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip

        def encode_texts(tokenizer, texts, max_len):
            enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
            return enc["input_ids"].long(), enc["attention_mask"].long()

        return tok, encode_texts
    directory = Path(path).parent
    source = directory if (directory / "tokenizer_config.json").exists() else path
    return load_tokenizer(str(source)), encode_texts


class Predictor:
    def __init__(self, model, cfg, tokenizer, encode_texts, answers: list[str], *, batch_size: int = 64):
        self.model, self.cfg = model.eval(), cfg
        self.tokenizer, self._encode_texts = tokenizer, encode_texts
        self.answers = answers
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_export(cls, export_dir, *, device: str | torch.device | None = None, batch_size: int = 64) -> Predictor:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, cfg, meta = load_export(export_dir, device=device)
        tokenizer, encode = _load_tokenizer(meta["tokenizer"])
        return cls(model, cfg, tokenizer, encode, meta["answers"], batch_size=batch_size)

    @classmethod
    def from_pretrained(cls, path_or_url: str, *, device: str | torch.device | None = None,
                        batch_size: int = 64) -> Predictor:
        """``from_export`` for a local folder or storage URL, an export or a run folder with one."""
        return cls.from_export(local_export(path_or_url), device=device, batch_size=batch_size)

    # --- inputs ------------------------------------------------------------------------------

    def image_tensor(self, images: list) -> Tensor:
        """PIL images -> uint8 [B, 3, S, S] on the model's device, S = data.image_size."""
        from PIL import Image  # noqa: PLC0415

        size = self.cfg.data.image_size
        arrays = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC, reducing_gap=3.0)
            arrays.append(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def text_tensors(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self._encode_texts(self.tokenizer, list(texts), self.cfg.model.max_text_len)
        return ids.to(self.device), mask.to(self.device)

    # --- outputs -----------------------------------------------------------------------------

    @torch.no_grad()
    def answer(self, images: list, questions: list[str]) -> list[tuple[str, float]]:
        """The most probable answer and its softmax probability, per (image, question) pair."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        out = []
        for i in range(0, len(images), self.batch_size):
            ids, mask = self.text_tensors(questions[i : i + self.batch_size])
            logits = self.model.answer_logits(self.image_tensor(images[i : i + self.batch_size]), ids, mask)
            prob, idx = logits.float().softmax(-1).max(-1)
            out += [(self.answers[j], p) for j, p in zip(idx.tolist(), prob.tolist())]
        return out

    @torch.no_grad()
    def embed_images(self, images: list) -> Tensor:
        """[B, embed_dim] L2-normalised image embeddings (float32, CPU)."""
        chunks = [self.model.encode_image(self.image_tensor(images[i : i + self.batch_size])).float().cpu()
                  for i in range(0, len(images), self.batch_size)]  # fmt: skip
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        """[B, embed_dim] L2-normalised text embeddings (float32, CPU)."""
        chunks = [self.model.encode_text(*self.text_tensors(texts[i : i + self.batch_size])).float().cpu()
                  for i in range(0, len(texts), self.batch_size)]  # fmt: skip
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.embed_dim)
