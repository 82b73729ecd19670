"""Predictor: answers and embeddings from an export directory, for PIL images and strings.

The one inference path: ``evaluate`` runs through it too. Images are brought to the shards' size
the way the shard writer and the loader do (``raymmr.data.images``), then the model resizes to
``model.image_size`` if that differs, as in training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from raymmr.data.images import image_array
from raymmr.data.tokenizer import encode_texts, load_tokenizer
from raymmr.model.export import local_export
from raymmr.model.model import load_export


class Predictor:
    def __init__(self, model, cfg, tokenizer, answers: list[str], *, batch_size: int = 64):
        self.model, self.cfg = model.eval(), cfg
        self.tokenizer = tokenizer
        self.answers = answers
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @classmethod
    def from_export(cls, export_dir, *, device: str | torch.device | None = None, batch_size: int = 64) -> Predictor:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, cfg, meta = load_export(export_dir, device=device)
        return cls(model, cfg, load_tokenizer(meta["tokenizer"]), meta["answers"], batch_size=batch_size)

    @classmethod
    def from_pretrained(cls, path_or_url: str, *, device: str | torch.device | None = None,
                        batch_size: int = 64) -> Predictor:
        """``from_export`` for a local folder or storage URL, an export or a run folder with one."""
        return cls.from_export(local_export(path_or_url), device=device, batch_size=batch_size)

    # --- inputs ------------------------------------------------------------------------------

    def image_tensor(self, images) -> Tensor:
        """PIL images (brought to data.image_size as the shard writer does) or uint8 [3, S, S]
        arrays already at that size -> uint8 [B, 3, S, S] on the model's device."""
        size = self.cfg.data.image_size
        arrays = []
        for im in images:
            if isinstance(im, np.ndarray):
                if im.shape != (3, size, size) or im.dtype != np.uint8:
                    raise ValueError(f"image array of shape {im.shape} {im.dtype}: expected uint8 (3, {size}, {size}) "
                                     "(or pass a PIL image, which is resized)")
                arrays.append(im)
            else:
                arrays.append(image_array(im, size))
        return torch.from_numpy(np.stack(arrays)).to(self.device)

    def text_tensors(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = encode_texts(self.tokenizer, list(texts), self.cfg.model.max_text_len)
        return ids.to(self.device), mask.to(self.device)

    def _batches(self, n: int, desc: str | None):
        """Batch start offsets; a progress bar on stderr when ``desc`` names the pass."""
        from tqdm.auto import tqdm

        return tqdm(range(0, n, self.batch_size), desc=desc, unit="batch", disable=desc is None, leave=False)

    def _images(self, images, start: int, perturbation) -> Tensor:
        x = self.image_tensor(images[start : start + self.batch_size])
        return x if perturbation is None else perturbation.images(x, start)

    def _texts(self, texts, start: int, perturbation) -> tuple[Tensor, Tensor]:
        chunk = list(texts[start : start + self.batch_size])
        return self.text_tensors(chunk if perturbation is None else perturbation.texts(chunk, start))

    # --- outputs -----------------------------------------------------------------------------
    # ``perturbation``: a ``raymmr.perturb.SeededPerturbation`` applied to each batch's inputs
    # (evaluation under shift); ``desc``: show a progress bar with this label.

    @torch.no_grad()
    def answer_logits(self, images, questions: list[str], *, perturbation=None, desc: str | None = None) -> Tensor:
        """[N, num_answers] float32 on CPU, one row per (image, question) pair."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        chunks = [self.model.answer_logits(self._images(images, i, perturbation),
                                           *self._texts(questions, i, perturbation)).float().cpu()
                  for i in self._batches(len(images), desc)]  # fmt: skip
        return torch.cat(chunks) if chunks else torch.zeros(0, len(self.answers))

    def answer(self, images, questions: list[str], **kwargs) -> list[tuple[str, float]]:
        """The most probable answer and its softmax probability, per (image, question) pair."""
        prob, idx = self.answer_logits(images, questions, **kwargs).softmax(-1).max(-1)
        return [(self.answers[j], p) for j, p in zip(idx.tolist(), prob.tolist())]

    @torch.no_grad()
    def embed_images(self, images, *, perturbation=None, desc: str | None = None) -> Tensor:
        """[N, embed_dim] L2-normalised image embeddings (float32, CPU)."""
        chunks = [self.model.encode_image(self._images(images, i, perturbation)).float().cpu()
                  for i in self._batches(len(images), desc)]  # fmt: skip
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.embed_dim)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], *, perturbation=None, desc: str | None = None) -> Tensor:
        """[N, embed_dim] L2-normalised text embeddings (float32, CPU)."""
        chunks = [self.model.encode_text(*self._texts(texts, i, perturbation)).float().cpu()
                  for i in self._batches(len(texts), desc)]  # fmt: skip
        return torch.cat(chunks) if chunks else torch.zeros(0, self.model.embed_dim)
