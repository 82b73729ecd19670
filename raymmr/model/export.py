"""Exports: everything inference needs, in one directory.

    model.safetensors   the full state dict (momentum encoders included, so an export can also
                        seed further pre-training); metadata: vocab size, answer count, special
                        token ids and the towers' architectures (``RaymmrModel.tower_spec``), so
                        loading needs neither the network nor the CLIP checkpoints it started from
    config.yaml         the resolved config (``raymmr.config.save_config``)
    config.json         what the model is, for tools that read Hugging Face-style folders: model
                        type, architecture, vocabulary sizes, special ids, towers, the model config
    tokenizer.json      the tokenizer (+ tokenizer_config.json etc. for a Hugging Face tokenizer)
    answers.json        the answer vocabulary, index -> answer string
    README.md           the model card: what was trained on what, how big, intended use and limits,
                        and the evaluation once ``write_model_card`` is given one

``RaymmrModel.from_pretrained`` / ``save_pretrained`` and ``Predictor.from_pretrained`` read and
write this folder (a local path or a storage URL for reading); exports written before config.json
and the card existed load the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from raymmr.config import Config, load_config, save_config
from raymmr.storage import WEIGHTS

EXPORT_FORMAT = "raymmr-export-1"
CARD = "README.md"
MOMENTUM_PREFIX = "momentum_"  # the momentum encoders' weights (counted apart on the card)


def save_export(model: torch.nn.Module, cfg: Config, out_dir, *, tokenizer, answers: list[str],
                stage: str = "") -> Path:
    """Write the export (see the module docstring) of ``model`` (a ``RaymmrModel``) into
    ``out_dir``; returns its path. ``tokenizer``: a tokenizer.json file, a directory holding one, or
    a loaded tokenizer (anything with ``save_pretrained``, e.g. a Hugging Face tokenizer with its
    special-token config). ``stage``: the training stage that made it ("pretrain", "finetune"; ""
    when not a training job's), recorded in the weights' metadata and named by the card."""
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
        "stage": stage,
    }
    tmp = out / f".{WEIGHTS}.tmp{os.getpid()}"
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out / WEIGHTS)  # a reader never sees half a file
    save_config(cfg, out / "config.yaml")
    (out / "answers.json").write_text(json.dumps(list(answers), ensure_ascii=False))
    (out / "config.json").write_text(json.dumps(hf_config(model, cfg), indent=1, sort_keys=True))
    _save_tokenizer(tokenizer, out)
    (out / CARD).write_text(model_card(cfg, parameter_counts({k: v.numel() for k, v in state.items()}), answers,
                                       stage=stage))
    return out


def hf_config(model: torch.nn.Module, cfg: Config) -> dict:
    """config.json: what the weights' metadata says, in the shape Hugging Face-style tools look for."""
    from raymmr import __version__

    return {
        "model_type": "raymmr",
        "architectures": ["RaymmrModel"],
        "format": EXPORT_FORMAT,
        "raymmr_version": __version__,
        **{k: getattr(model, k) for k in ("vocab_size", "num_answers", "pad_token_id", "mask_token_id")},
        "towers": model.tower_spec(),
        "image_size": cfg.data.image_size,
        "model": asdict(cfg.model),
    }


def parameter_counts(numels: dict[str, int]) -> dict[str, int]:
    """Parameters (name -> element count) of the model that answers and of its momentum copies."""
    momentum = sum(n for k, n in numels.items() if k.startswith(MOMENTUM_PREFIX))
    return {"model": sum(numels.values()) - momentum, "momentum": momentum}


TRAINED_BY = {
    "pretrain": "- Pre-training: {train.steps} steps, batch {train.batch_size} per worker, lr {train.lr}",
    "finetune": "- Fine-tuning: {finetune.steps} steps from a pre-training export (its own card lists that "
                "training), batch {train.batch_size} per worker, lr {finetune.lr}",
    "": "- Training: not recorded (saved with `save_pretrained`, not by a training job)",
}


def model_card(cfg: Config, params: dict[str, int], answers: list[str], evaluation: str = "",
               stage: str = "") -> str:
    """The export's README.md. ``evaluation``: the card's evaluation section, as markdown
    (``raymmr.eval.evaluate`` renders it); ``stage``: the training stage that made the export
    (``save_export``)."""
    m = cfg.model
    data = cfg.data.train_shards or f"SynthRad (generated: {cfg.data.synthrad_train} train images, seed {cfg.data.seed})"
    lines = [
        "---", "library_name: raymmr", "tags: [medical-vqa, vision-language, image-text-retrieval]", "---", "",
        "# raymmr model", "",
        "A vision-language model for medical visual question answering and image-text retrieval, "
        "pre-trained and fine-tuned with raymmr (CMDPI masked reconstruction + contrastive pre-training, "
        "difference reconstruction and head mixup; Robust-MMR perturbation-aware masking, domain "
        "consistency and modality resilience).", "",
        "## Model", "",
        f"- Method: `{cfg.method}`",
        f"- Image tower: {m.image_layers} layers x {m.image_width} (`{m.image_model}`, patch {m.patch_size}, "
        f"{m.image_size} px); text tower: {m.text_layers} layers x {m.text_width} (`{m.text_model}`); "
        f"RecNet: {m.recnet_layers} layers x {m.recnet_width}",
        f"- Parameters: {params['model'] / 1e6:.2f} M (+ {params['momentum'] / 1e6:.2f} M in the momentum encoders, "
        "used by pre-training only)",
        f"- Answers: {len(answers)} classes (`answers.json`); tokenizer: `tokenizer.json`; full config: `config.yaml`",
        "", "## Training data", "",
        f"- Shards: {data}",
        TRAINED_BY.get(stage, TRAINED_BY[""]).format(train=cfg.train, finetune=cfg.finetune),
        "", "## Use", "", "```python",
        "from raymmr.serve import Predictor",
        'predictor = Predictor.from_pretrained("THIS_FOLDER_OR_URL")',
        'predictor.answer([pil_image], ["Is there a lesion?"])  # [(answer, probability)]',
        "```", "",
        "## Evaluation", "",
    ]
    if evaluation:
        lines += [evaluation.rstrip(), ""]
    else:
        lines += ["Not evaluated yet: `raymmr evaluate --model THIS_FOLDER --data SHARDS --out DIR --card` "
                  "writes the results here.", ""]
    lines += [
        "## Intended use and limits", "",
        "A research model for studying robust medical vision-language learning. It is **not a medical "
        "device** and must not be used for diagnosis or treatment decisions. Its answers come from a "
        "fixed answer vocabulary; accuracy measured on one dataset (above) says little about another "
        "scanner, protocol, population or reporting style. Models trained on SynthRad (procedural "
        "images) have never seen a real patient.", "",
    ]
    return "\n".join(lines)


def write_model_card(export: str, evaluation: str) -> None:
    """Rewrite the card of ``export`` (a local path or storage URL) with an ``evaluation`` section
    (markdown)."""
    from raymmr import storage

    local = storage.cached_copy(export, "exports")
    cfg = load_config(str(local / "config.yaml"))
    answers = json.loads((local / "answers.json").read_text())
    with safe_open(str(local / WEIGHTS), framework="pt") as f:
        params = parameter_counts({k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()})
        stage = (f.metadata() or {}).get("stage", "")
    storage.write_text(storage.join(storage.normalize(export), CARD),
                       model_card(cfg, params, answers, evaluation, stage=stage))


def _save_tokenizer(tokenizer, out: Path) -> None:
    if hasattr(tokenizer, "save_pretrained"):  # a loaded tokenizer: its special-token config too
        tokenizer.save_pretrained(str(out))
        return
    src = Path(tokenizer)
    if src.is_dir():
        if (src / "tokenizer_config.json").exists():  # its special tokens live there: copy all of it
            raise ValueError(f"save_export: {tokenizer} is a Hugging Face tokenizer's folder; give the tokenizer "
                             "loaded (its save_pretrained keeps the special-token config)")
        src = src / "tokenizer.json"
    if not src.is_file():
        raise ValueError(f"save_export: {tokenizer!r} is neither a tokenizer.json, a folder holding one, nor a "
                         "loaded tokenizer (give a Hugging Face tokenizer loaded, not its name)")
    shutil.copyfile(src, out / "tokenizer.json")


def read_meta(export_dir) -> dict:
    with safe_open(str(Path(export_dir) / WEIGHTS), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{export_dir}/{WEIGHTS} is not a raymmr export (format {meta.get('format')!r})")
    return meta


def local_export(path_or_url: str) -> Path:
    """A local copy of the export at ``path_or_url`` (an export folder, or a run folder with an
    ``export/`` inside; a local path or a storage URL)."""
    from raymmr import storage

    return storage.cached_copy(storage.require_export(str(path_or_url)), "exports")


def read_export(export_dir) -> tuple[Config, dict, dict[str, torch.Tensor]]:
    """-> (config, meta, state dict) of a local export folder, with meta = {vocab_size, num_answers,
    pad_token_id, mask_token_id, towers, answers, tokenizer (the folder, which holds it)}.
    ``raymmr.model.model.load_export`` builds the model from them."""
    from safetensors.torch import load_file

    path = Path(export_dir)
    cfg = load_config(str(path / "config.yaml"))
    raw = read_meta(path)
    meta = {k: int(raw[k]) for k in ("vocab_size", "num_answers", "pad_token_id", "mask_token_id")}
    meta["towers"] = json.loads(raw["towers"])
    meta["answers"] = json.loads((path / "answers.json").read_text())
    meta["tokenizer"] = str(path)  # the folder: tokenizer.json (and a Hugging Face tokenizer's config)
    return cfg, meta, load_file(str(path / WEIGHTS))
