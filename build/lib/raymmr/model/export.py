"""Exports: everything inference needs, in one directory.

    model.safetensors   the full state dict (momentum encoders included, so an export can also
                        seed further pre-training); metadata: vocab size, answer count, special
                        token ids and the towers' architectures (``RaymmrModel.tower_spec``), so
                        loading needs neither the network nor the CLIP checkpoints it started from
    config.yaml         the resolved config (``raymmr.config.save_config``)
    tokenizer.json      the tokenizer (+ tokenizer_config.json etc. for a Hugging Face tokenizer)
    answers.json        the answer vocabulary, index -> answer string
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from raymmr.config import Config, load_config, save_config
from raymmr.model.model import RaymmrModel

EXPORT_FORMAT = "raymmr-export-1"
WEIGHTS = "model.safetensors"


def save_export(model: RaymmrModel, cfg: Config, out_dir, *, tokenizer_dir, answers: list[str]) -> Path:
    """Write the export (see the module docstring) into ``out_dir``; returns its path.
    ``tokenizer_dir``: a directory holding tokenizer.json, a tokenizer.json file, or a Hugging Face
    tokenizer name/directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(answers) != model.num_answers:
        raise ValueError(f"{len(answers)} answers for a model with {model.num_answers} answer classes")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": EXPORT_FORMAT,
        "vocab_size": str(model.vocab_size),
        "num_answers": str(model.num_answers),
        "pad_token_id": str(model.pad_token_id),
        "mask_token_id": str(model.mask_token_id),
        "towers": json.dumps(model.tower_spec()),
    }
    tmp = out / f".{WEIGHTS}.tmp{os.getpid()}"
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out / WEIGHTS)  # a reader never sees half a file
    save_config(cfg, out / "config.yaml")
    (out / "answers.json").write_text(json.dumps(list(answers), ensure_ascii=False))
    _save_tokenizer(tokenizer_dir, out)
    return out


def _save_tokenizer(source, out: Path) -> None:
    src = Path(source)
    if src.is_file():
        shutil.copyfile(src, out / "tokenizer.json")
    elif src.is_dir() and (src / "tokenizer.json").is_file() and not (src / "tokenizer_config.json").exists():
        shutil.copyfile(src / "tokenizer.json", out / "tokenizer.json")
    else:  # a Hugging Face tokenizer (name or directory): keep its special-token config too
        from raymmr.data.tokenizer import load_tokenizer  # noqa: PLC0415

        load_tokenizer(str(source)).save_pretrained(str(out))


def read_meta(export_dir) -> dict:
    with safe_open(str(Path(export_dir) / WEIGHTS), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{export_dir}/{WEIGHTS} is not a raymmr export (format {meta.get('format')!r})")
    return meta


def load_export(export_dir, device: str | torch.device = "cpu") -> tuple[RaymmrModel, Config, dict]:
    """-> (model in eval mode, config, meta) with meta = {vocab_size, num_answers, pad_token_id,
    mask_token_id, answers, tokenizer (path), towers}."""
    path = Path(export_dir)
    cfg = load_config(str(path / "config.yaml"))
    raw = read_meta(path)
    meta = {k: int(raw[k]) for k in ("vocab_size", "num_answers", "pad_token_id", "mask_token_id")}
    meta["towers"] = json.loads(raw["towers"])
    # The towers are rebuilt from the stored architectures; the weights come from the export,
    # never from model.image_pretrained / text_pretrained (which may name a download).
    model_cfg = replace(cfg.model, image_pretrained="", text_pretrained="")
    model = RaymmrModel(model_cfg, towers=meta["towers"], **{k: meta[k] for k in
                        ("vocab_size", "num_answers", "pad_token_id", "mask_token_id")})  # fmt: skip
    from safetensors.torch import load_file  # noqa: PLC0415

    model.load_state_dict(load_file(str(path / WEIGHTS)), strict=True)
    meta["answers"] = json.loads((path / "answers.json").read_text())
    meta["tokenizer"] = str(path / "tokenizer.json")
    return model.to(device).eval(), cfg, meta
