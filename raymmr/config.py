"""One typed config tree for every raymmr job.

Loaded once from a preset name or a YAML file, with dotted ``--set`` overrides, validated before
Ray or any worker starts; each component then receives only its slice (``cfg.model``,
``cfg.loss``, ...). The DeepSpeed JSON is generated from ``cfg.train`` (see ``raymmr.train``).

Field metadata carries the allowed values: ``range=(lo, hi)`` (inclusive), ``choices=[...]``,
so one table drives validation, error messages and the search-space checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"

# The two methods raymmr joins. Each group is the set of config values that removes one method's
# own parts, defined here once: a method is a base preset minus groups, and each ablation arm
# removes exactly one group (``raymmr.ablation``).
METHOD_GROUPS: dict[str, dict[str, Any]] = {
    # Robust-MMR: asymmetric perturbation-aware masking (off: CMDPI's symmetric random masking at
    # mask_ratio_img / mask_ratio_txt on clean input), domain consistency, modality resilience and
    # perturbed inputs during fine-tuning.
    "robust_mmr": {"masking.asymmetric": False, "loss.w_dom_consist": 0.0, "loss.w_mod_resil": 0.0,
                   "perturbation.in_finetune": False},
    # CMDPI's fine-tuning (Eq. 13: difference reconstruction + head mixup). Without it a model is
    # fine-tuned the plain way, with the answer CE alone (``check_finetune_objective`` refuses the
    # answer CE beside mix or diff: Eq. 13 has no such term).
    "cmdpi_finetune": {"loss.w_mix": 0.0, "loss.w_diff": 0.0, "loss.w_ans_finetune": 1.0},
}
METHODS: dict[str, tuple[str, ...]] = {
    "combined": (),  # CMDPI + Robust-MMR: the presets as they are
    "cmdpi": ("robust_mmr",),  # CMDPI alone, with the paper's settings
}


def without_groups(groups) -> dict[str, Any]:
    """The config values that remove ``groups`` (names of ``METHOD_GROUPS``)."""
    out: dict[str, Any] = {}
    for g in groups:
        if g not in METHOD_GROUPS:
            raise ConfigError(f"unknown method group '{g}'; groups: {', '.join(METHOD_GROUPS)}")
        out.update(METHOD_GROUPS[g])
    return out


def method_values(method: str) -> dict[str, Any]:
    """The config values that make a preset run ``method`` (one of ``METHODS``)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    return without_groups(METHODS[method])


class ConfigError(ValueError):
    """A config key, type or value that is not allowed; the message names it and the fix."""


def worker_count(text: str | int) -> int | tuple[int, int]:
    """``train.num_workers`` as Ray Train takes it: ``"4"`` -> 4, ``"2:8"`` -> (2, 8), an elastic group."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) > 2 or isinstance(text, (bool, float)):
            raise ValueError
        lo, hi = int(parts[0]), int(parts[-1])
    except ValueError:
        raise ValueError(f"{text!r} is not a worker count: expected N or MIN:MAX, e.g. 4 or 2:8") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{text!r}: expected N >= 1, or MIN:MAX with 1 <= MIN <= MAX")
    return lo if len(parts) == 1 else (lo, hi)


def worker_text(value: str | int) -> str:
    """The canonical text of a worker count (checked): "4" or "2:8"."""
    n = worker_count(value)
    return f"{n[0]}:{n[1]}" if isinstance(n, tuple) else str(n)


def names_text(value: str) -> str:
    """The canonical text of a comma-separated list of names: "a,b" (spaces dropped, none empty)."""
    names = [n.strip() for n in str(value).split(",")]
    if not all(names):
        raise ValueError(f"{value!r}: an empty name; give names separated by commas, e.g. 'a,b'")
    return ",".join(names)


def seeds_text(value: str) -> str:
    """``names_text`` of distinct non-negative integer seeds: "0,1,2"."""
    text = names_text(value)
    seeds = text.split(",")
    if not all(s.isdigit() for s in seeds) or len(set(map(int, seeds))) < len(seeds):
        raise ValueError(f"{value!r}: give distinct non-negative integers separated by commas, e.g. 0,1,2")
    return ",".join(str(int(s)) for s in seeds)


def modes_text(value: str) -> str:
    """``names_text`` of optimisation directions, each 'min' or 'max'."""
    text = names_text(value)
    bad = [m for m in text.split(",") if m not in ("min", "max")]
    if bad:
        raise ValueError(f"{bad}: each direction is 'min' or 'max' (one per tune.metric, separated by commas)")
    return text


def objectives(tune: TuneConfig) -> list[tuple[str, str]]:
    """A sweep's objectives: ``(metric, mode)`` pairs from ``tune.metric`` and ``tune.mode`` (one
    name, or several separated by commas: a multi-objective sweep, the first its primary)."""
    metrics, modes = tune.metric.split(","), tune.mode.split(",")
    if len(metrics) != len(modes):
        raise ConfigError(f"tune.metric={tune.metric} names {len(metrics)} metric(s) but tune.mode={tune.mode} "
                          f"{len(modes)} direction(s): give one direction per metric, in order")
    return list(zip(metrics, modes))


def check_synthrad_domains(num_domains: int, test_domain: int, val_domain: int = -1) -> None:
    """SynthRad's held-out sites must exist, differ, and leave training at least one site."""
    if not 0 <= test_domain < num_domains:
        raise ConfigError(f"data.synthrad_test_domain={test_domain} must be in [0, {num_domains - 1}] "
                          f"(data.synthrad_domains={num_domains})")
    if val_domain != -1 and not 0 <= val_domain < num_domains:
        raise ConfigError(f"data.synthrad_val_domain={val_domain} must be -1 (none) or in [0, {num_domains - 1}] "
                          f"(data.synthrad_domains={num_domains})")
    if val_domain == test_domain:
        raise ConfigError(f"data.synthrad_val_domain={val_domain} is the test domain: choices made on it would be "
                          "made on test (DomainBed); pick another site, or -1")
    if num_domains - 1 - (val_domain != -1) < 1:
        raise ConfigError(f"data.synthrad_domains={num_domains} leaves no training domain beside the held-out ones")


def _f(default, *, range=None, choices=None, parse=None, help=""):  # noqa: A002 - 'range' reads best here
    meta = {"help": help}
    if parse is not None:
        meta["parse"] = parse
    if range is not None:
        meta["range"] = range
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    # image tower (timm ViT)
    image_model: str = _f("vit_base_patch16_clip_224", help="timm model name of the image tower")
    image_pretrained: str = _f("", help="'' (random init), a local checkpoint file/dir, or 'hub:<name>'")
    image_size: int = _f(224, range=(16, 1024))
    patch_size: int = _f(16, range=(2, 64))
    image_width: int = _f(768, range=(16, 8192))
    image_layers: int = _f(12, range=(1, 64))
    image_heads: int = _f(12, range=(1, 128))
    # text tower (transformers)
    text_model: str = _f("clip", choices=["clip", "bert"], help="architecture family of the text tower")
    text_pretrained: str = _f("", help="'' (random init), a local directory or a hub name for from_pretrained")
    text_width: int = _f(512, range=(16, 8192))
    text_layers: int = _f(12, range=(1, 64))
    text_heads: int = _f(8, range=(1, 128))
    max_text_len: int = _f(64, range=(4, 512))
    # fusion, RecNet and heads
    recnet_width: int = _f(512, range=(16, 8192))
    recnet_layers: int = _f(4, range=(1, 48))
    recnet_heads: int = _f(8, range=(1, 128))
    embed_dim: int = _f(256, range=(8, 4096), help="width of the contrastive projection space")
    dropout: float = _f(0.1, range=(0.0, 0.9))
    momentum: float = _f(0.995, range=(0.0, 1.0), help="EMA factor of the momentum encoders")
    norm_pix_loss: bool = _f(True, help="normalise each patch's pixels before the MSE (MAE)")
    gradient_checkpointing: bool = _f(False)


@dataclass
class MaskingConfig:
    mask_ratio_img: float = _f(0.75, range=(0.0, 0.99), help="symmetric masking (masking.asymmetric=false) only")
    mask_ratio_txt: float = _f(0.15, range=(0.0, 0.99),
                               help="symmetric pre-training masks; also the question mask of fine-tuning's diff pass")
    asymmetric: bool = _f(True, help="Robust-MMR asymmetric perturbation-aware masking")
    mask_ratio_high: float = _f(0.75, range=(0.0, 0.99), help="ratio on the strongly perturbed side")
    mask_ratio_low: float = _f(0.15, range=(0.0, 0.99), help="ratio on the lightly perturbed side")
    p_img_side: float = _f(0.5, range=(0.0, 1.0), help="probability that the image is the strong side")


@dataclass
class PerturbationConfig:
    strong: str = _f("strong", choices=["none", "light", "medium", "strong"])
    light: str = _f("light", choices=["none", "light", "medium", "strong"])
    image_ops: list = _f(["noise", "blur", "gamma", "cutout", "downsample"])
    text_ops: list = _f(["delete", "synonym", "sentence_drop", "shuffle"])
    in_finetune: bool = _f(True, help="also perturb inputs during fine-tuning")
    finetune_share: float = _f(1.0, range=(0.0, 1.0),
                               help="with in_finetune: the share of fine-tuning samples perturbed (the rest stay clean)")


@dataclass
class LossConfig:
    w_img: float = _f(1.0, range=(0.0, 100.0), help="rec_img_global / rec_img_local")
    w_txt: float = _f(1.0, range=(0.0, 100.0), help="rec_txt_global / rec_txt_local")
    w_ans: float = _f(1.0, range=(0.0, 100.0), help="rec_ans_global / rec_ans_local")
    w_con_inter: float = _f(0.5, range=(0.0, 100.0), help="alpha: con_inter")
    w_con_intra: float = _f(1.0, range=(0.0, 100.0), help="alpha': con_intra")
    w_dom_consist: float = _f(0.1, range=(0.0, 100.0), help="lambda_dc: dom_consist")
    w_mod_resil: float = _f(0.1, range=(0.0, 100.0), help="lambda_mr: mod_resil")
    p_drop: float = _f(0.5, range=(0.0, 1.0), help="share of a batch whose image or text is dropped for mod_resil")
    temperature: float = _f(0.07, range=(0.001, 10.0), help="tau of every InfoNCE")
    w_mix: float = _f(1.0, range=(0.0, 100.0), help="fine-tuning: mix")
    w_ans_finetune: float = _f(0.0, range=(0.0, 100.0),
                               help="fine-tuning: a direct answer CE on the unmasked view, only without mix and diff "
                                    "(the plain fine-tuning; CMDPI Eq. 13 has no such term)")
    w_diff: float = _f(1.0, range=(0.0, 100.0), help="fine-tuning: diff_img + diff_txt")


@dataclass
class FinetuneConfig:
    steps: int = _f(2000, range=(0, 10_000_000))
    lr: float = _f(5e-5, range=(0.0, 1.0))
    similarity_threshold: float = _f(0.75, range=(-1.0, 1.0), help="cosine above which two images are similar")
    mixup_dist: str = _f("uniform", choices=["uniform", "beta", "fixed"])
    mixup_beta_a: float = _f(0.4, range=(0.01, 100.0))
    mixup_beta_b: float = _f(0.4, range=(0.01, 100.0))
    mixup_fixed: float = _f(0.5, range=(0.0, 1.0))
    mix_source: str = _f("diff", choices=["diff", "whole_question"],
                         help="head mixup's h_D: the difference pass (its question masked), or a RecNet pass over "
                              "the same deviated image features and the whole question")


@dataclass
class DataConfig:
    train_shards: str = _f("", help="shard dir, brace pattern or URL list; '' makes SynthRad shards")
    val_shards: str = _f("", help="'' = the val split beside train_shards")
    image_size: int = _f(224, range=(16, 1024), help="size the shards store images at")
    tokenizer: str = _f("", help="'' = tokenizer.json saved with the shards, else HF name or path")
    epoch_mode: str = _f("resampled", choices=["exact", "resampled"])
    samples_per_epoch: int = _f(0, range=(0, 10**12), help="resampled mode; 0 = size of the train split")
    shuffle_buffer: int = _f(1000, range=(0, 10**7), help="encoded samples in the shuffle reservoir")
    loader_workers: int = _f(2, range=(0, 64), help="DataLoader worker processes per Ray Train worker")
    blank_images: bool = _f(False, help="every image a flat grey (data.images.blank_image): the text-only "
                                        "baseline, the same model fine-tuned without pixels (docs/SPEC.md §5)")
    seed: int = _f(0, range=(0, 2**31 - 1))
    # SynthRad generation (used when no shards are given)
    synthrad_train: int = _f(20000, range=(1, 10**8))
    synthrad_val: int = _f(2000, range=(1, 10**8))
    synthrad_test: int = _f(2000, range=(1, 10**8))
    synthrad_pretrain: int = _f(20000, range=(1, 10**8), help="images of the pre-training corpus (disjoint from train/val/test)")
    synthrad_domains: int = _f(4, range=(2, 16))
    synthrad_test_domain: int = _f(3, range=(0, 15), help="held out of training for cross-domain tests")
    synthrad_val_domain: int = _f(-1, range=(-1, 15), help="held out of training and test, seen only in val: "
                                  "a shifted domain to choose on that is not the test domain (DomainBed); -1 none")
    samples_per_shard: int = _f(1000, range=(1, 10**7))


# The experiment trackers beside metrics.jsonl and TensorBoard (raymmr.train.tracking).
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass
class TrainConfig:
    steps: int = _f(10000, range=(0, 10_000_000), help="optimizer steps of pre-training")
    batch_size: int = _f(64, range=(1, 65536), help="micro batch per worker")
    grad_accum: int = _f(1, range=(1, 4096))
    lr: float = _f(1e-4, range=(0.0, 1.0))
    min_lr_ratio: float = _f(0.1, range=(0.0, 1.0))
    warmup_steps: int = _f(500, range=(0, 10_000_000))
    weight_decay: float = _f(0.05, range=(0.0, 10.0))
    beta1: float = _f(0.9, range=(0.0, 0.99999))
    beta2: float = _f(0.98, range=(0.0, 0.99999))
    grad_clip: float = _f(1.0, range=(0.0, 1e6), help="0 = no clipping")
    zero_stage: int = _f(2, range=(0, 3))
    precision: str = _f("auto", choices=["auto", "bf16", "fp32"], help="auto = bf16 on GPU, fp32 on CPU")
    compile: bool = _f(False, help="torch.compile the towers and RecNet (ZeRO stages 0-2)")
    seed: int = _f(0, range=(0, 2**31 - 1))
    log_every: int = _f(50, range=(1, 10**7))
    val_every: int = _f(1000, range=(0, 10**7), help="0 = no validation during training")
    val_batches: int = _f(20, range=(1, 10**7))
    checkpoint_every: int = _f(1000, range=(1, 10**7))
    num_to_keep: int = _f(2, range=(1, 1000))
    max_failures: int = _f(3, range=(-1, 1000), help="failures in a row without a new checkpoint before the run gives up "
                           "(progress resets the count; -1 = retry forever; preemptions Ray is told of never count)")
    max_nonfinite_steps: int = _f(10, range=(1, 10**6), help="stop after this many consecutive NaN/inf losses")
    num_workers: str = _f("1", parse=worker_text,
                          help="Ray Train workers: N, or MIN:MAX for an elastic group (worker_count reads it)")
    cpus_per_worker: float = _f(1.0, range=(0.0, 1024.0))
    gpus_per_worker: float = _f(0.0, range=(0.0, 16.0))
    memory_per_worker_gb: float = _f(0.0, range=(0.0, 65536.0),
                                     help="host memory Ray reserves for each worker, in GB (0 = none): Ray places "
                                     "workers only where it is free; the embedded fit check and a sweep's "
                                     "concurrency count it")
    tracker: str = _f("tensorboard", choices=list(TRACKERS),
                      help="metrics.jsonl and TensorBoard always; mlflow / wandb: also an MLflow / W&B run per stage "
                      "(raymmr.train.tracking)")
    tracking_uri: str = _f("", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    experiment: str = _f("", help="MLflow experiment or W&B project (default: raymmr-<stage>; sweeps: raymmr-sweep)")


@dataclass
class TuneConfig:
    num_samples: int = _f(20, range=(1, 100000))
    max_concurrent: int = _f(2, range=(1, 10000))
    metric: str = _f("val_vqa_accuracy", parse=names_text,
                     help="fixed validation metric reported at every rung; several, separated by commas, make a "
                     "multi-objective sweep (the Pareto front is reported; the first metric is the primary)")
    mode: str = _f("max", parse=modes_text, help="min or max, one per tune.metric, separated by commas")
    objective: str = _f("finetune", choices=["pretrain", "finetune"], help="pipeline run by each trial")
    rungs: int = _f(4, range=(1, 1000), help="validation reports per trial (ASHA max_t)")
    grace_period: int = _f(1, range=(1, 1000))
    reduction_factor: float = _f(2.0, range=(1.01, 100.0))
    trial_cpus: float = _f(0.01, range=(0.001, 1024.0))
    seed: int = _f(0, range=(0, 2**31 - 1))
    scheduler: str = _f("asha", choices=["asha", "fifo"], help="asha stops weak trials; fifo runs every trial to the end")
    sampler: str = _f("tpe", choices=["tpe", "random"], help="how a sampled space is searched: Optuna's TPE, or "
                      "random search (Optuna's RandomSampler); seeded by tune.seed")
    max_failures: int = _f(2, range=(0, 1000), help="retries of a failed trial (a lost node); each continues from its checkpoint")
    confirm_top: int = _f(3, range=(0, 1000), help="after the search, train this many best candidates (the front's "
                          "first, with several objectives) again with each of tune.confirm_seeds and rank them on "
                          "validation with intervals (raymmr.confirm); 0 = no confirmation")
    confirm_seeds: str = _f("0,1,2", parse=seeds_text, help="the seeds of the confirmation, e.g. 0,1,2")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    perturbation: PerturbationConfig = field(default_factory=PerturbationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    preset: str = "base"
    method: str = "combined"  # see METHODS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- paths and fields


TOP_LEVEL = ("preset", "method")  # the names of a config, not settings


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def field_spec(path: str) -> tuple[dataclasses.Field, type]:
    """The dataclass field and its type for a dotted path like ``loss.w_img``.

    Raises ConfigError naming the closest valid keys when the path does not exist."""
    node: Any = Config
    parts = path.split(".")
    for i, part in enumerate(parts):
        names = {f.name: f for f in dataclasses.fields(node) if f.name not in TOP_LEVEL}
        if part not in names:
            prefix = ".".join(parts[:i])
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            close = difflib.get_close_matches(path, valid, n=3, cutoff=0.5) or difflib.get_close_matches(
                part, list(names), n=3, cutoff=0.4
            )
            hint = f"; did you mean {', '.join(close)}?" if close else f"; valid keys here: {', '.join(valid)}"
            raise ConfigError(f"unknown config key '{path}' ('{part}' is not a field of '{prefix or 'config'}'){hint}")
        f = names[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(_hints(node)[part]):
                raise ConfigError(f"unknown config key '{path}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = _hints(node)[part]
        else:
            if dataclasses.is_dataclass(_hints(node)[part]):
                raise ConfigError(f"config key '{path}' is a section; set one of its fields, e.g. '{path}.<field>'")
            return f, _hints(node)[part]
    raise ConfigError(f"empty config key '{path}'")


def all_paths() -> list[str]:
    out = []
    for sec in dataclasses.fields(Config):
        if sec.name in TOP_LEVEL:
            continue
        out += [f"{sec.name}.{f.name}" for f in dataclasses.fields(_hints(Config)[sec.name])]
    return out


def check_value(path: str, value: Any) -> Any:
    """Convert ``value`` to the field's type and check its range/choices; returns the clean value."""
    f, typ = field_spec(path)
    meta = f.metadata
    try:
        value = _coerce(typ, value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{path}': {value!r} is not a valid {typ.__name__}") from None
    if "range" in meta:
        lo, hi = meta["range"]
        if not lo <= value <= hi:
            raise ConfigError(f"config key '{path}': {value!r} is out of range; allowed {lo} <= {path} <= {hi}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"config key '{path}': {value!r} is not allowed; choose one of {list(meta['choices'])}")
    if "parse" in meta:
        try:
            value = meta["parse"](value)
        except ValueError as e:
            raise ConfigError(f"config key '{path}': {e}") from None
    return value


def _coerce(typ, value):
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError
    if typ is int:
        if isinstance(value, str):
            value = value.strip()
            value = int(value) if value.lstrip("+-").isdigit() else float(value)
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        return int(value)
    if typ is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if typ is str:
        if isinstance(value, (dict, list)):
            raise TypeError
        return "" if value is None else str(value)
    if typ is list or isinstance(typ, types.GenericAlias):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return list(value)
    return value


# --------------------------------------------------------------------------- loading


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


class TextLoader(yaml.SafeLoader):
    """Config YAML with every plain scalar read as text: ``check_value`` then reads each value by
    its field's own type. YAML 1.1's guesses never apply (``2:4`` is the base-60 number 124 there,
    the country code ``no`` is False, ``1e3`` a float in a text field)."""


TextLoader.yaml_implicit_resolvers = {}


class CoreLoader(yaml.SafeLoader):
    """YAML 1.2's core schema, for files whose numbers are not config fields themselves (search
    spaces): no base-60 numbers and no yes/no/on/off booleans; ``1e-3`` is a float."""


CoreLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (
        "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
     "-+.0123456789"),
):
    CoreLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def parse_override(path: str, raw: str) -> Any:
    """One ``--set KEY=VALUE`` value, as text for ``check_value`` to read by the field's type; a list
    field also takes a YAML flow list (``[a, b]``) besides ``a,b``."""
    _, typ = field_spec(path)
    if (typ is list or isinstance(typ, types.GenericAlias)) and raw.strip().startswith("["):
        return yaml.load(raw, Loader=TextLoader)  # noqa: S506 - a SafeLoader subclass
    return raw


def _read_yaml(path: Path) -> dict:
    return _parse_yaml(path.read_text(), path)


def _parse_yaml(text: str, where) -> dict:
    try:
        data = yaml.load(text, Loader=TextLoader) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config file must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(source: str = "base", overrides: list[str] | dict | None = None, method: str | None = None) -> Config:
    """Build a validated Config from a preset name or YAML path, then apply dotted overrides.

    A YAML file may name a preset it extends with a top-level ``preset:`` key (written by
    ``save_config``), so a resolved config and a short file both load. ``method`` (else the file's
    ``method:`` key, else "combined") applies its values (``METHODS``) to the preset; a file's own
    values and then the overrides come after them.
    """
    from raymmr import storage

    path = Path(source)
    if source in preset_names():
        data, name = _read_yaml(PRESET_DIR / f"{source}.yaml"), source
    elif storage.is_remote(source):  # a sweep's best_config.yaml in its bucket, a run's config.yaml
        if not storage.exists(source):
            raise ConfigError(f"config file '{source}' does not exist")
        data, name = _parse_yaml(storage.read_text(source), source), None
    elif path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file '{source}' does not exist (presets: {', '.join(preset_names())})")
        data, name = _read_yaml(path), None
    else:
        raise ConfigError(f"'{source}' is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    base = data.pop("preset", None)
    method = method or data.pop("method", None) or "combined"
    data.pop("method", None)
    if name is None and base is not None:
        if base not in preset_names():
            raise ConfigError(f"{source}: preset '{base}' does not exist (presets: {', '.join(preset_names())})")
        base_data = _read_yaml(PRESET_DIR / f"{base}.yaml")
        base_data.pop("preset", None)
        # The method changes the preset; the file's own values (a saved run's) come after it.
        values = {**flatten(base_data), **method_values(method), **flatten(data)}
        name = base
    else:
        values = {**flatten(data), **method_values(method)}
        name = name or "custom"
    given: dict[str, Any] = {}
    if isinstance(overrides, dict):
        given.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"--set '{item}': expected key=value, e.g. --set loss.w_img=0.5")
            key, raw = item.split("=", 1)
            given[key.strip()] = parse_override(key.strip(), raw)
    values.update(given)
    return with_values(Config(preset=name, method=method), values, given=given)


def with_values(cfg: Config, values: dict[str, Any], *, given: dict[str, Any] | None = None) -> Config:
    """``cfg`` with ``values`` (dotted path -> value) set, validated, and refused where ``given``
    (the settings a user chose; default ``values``) would be silently ignored. Changes ``cfg``."""
    for key, value in values.items():
        set_value(cfg, key, value)
    validate(cfg)
    check_overrides_act(cfg, values if given is None else given)
    return cfg


# (switch, its value, the settings that value makes idle, what happens instead)
IDLE_SETTINGS = (
    ("perturbation.in_finetune", False, ("perturbation.finetune_share",), "fine-tuning inputs are all clean"),
    ("masking.asymmetric", True, ("masking.mask_ratio_img",),
     "the strongly perturbed side is masked at masking.mask_ratio_high and the other at mask_ratio_low"),
    ("masking.asymmetric", False, ("masking.mask_ratio_high", "masking.mask_ratio_low", "masking.p_img_side"),
     "each modality is masked at mask_ratio_img / mask_ratio_txt"),
)


def check_overrides_act(cfg: Config, given: dict) -> None:
    """Refuse a setting (an override, a search-space parameter) that the resolved config would
    silently ignore."""
    for switch, value, keys, how in IDLE_SETTINGS:
        idle = [k for k in keys if k in given]
        if idle and get_value(cfg, switch) == value:
            raise ConfigError(f"{', '.join(idle)}: no effect with {switch}={str(value).lower()} ({how}); "
                              f"set {switch}={str(not value).lower()} to use it")


def set_value(cfg: Config, path: str, value: Any) -> None:
    value = check_value(path, value)
    section, name = path.split(".", 1)
    setattr(getattr(cfg, section), name, value)


def get_value(cfg: Config, path: str) -> Any:
    field_spec(path)
    section, name = path.split(".", 1)
    return getattr(getattr(cfg, section), name)


def validate(cfg: Config) -> None:
    """Cross-field checks that no single field's range can express."""
    m = cfg.model
    if m.image_size % m.patch_size:
        raise ConfigError(f"model.image_size={m.image_size} must be a multiple of model.patch_size={m.patch_size}")
    for width, heads, name in [
        (m.image_width, m.image_heads, "image"),
        (m.text_width, m.text_heads, "text"),
        (m.recnet_width, m.recnet_heads, "recnet"),
    ]:
        if width % heads:
            raise ConfigError(f"model.{name}_width={width} must be divisible by model.{name}_heads={heads}")
    if cfg.data.image_size < m.image_size:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is smaller than model.image_size={m.image_size}; "
            "shards must store images at least at the model's size"
        )
    check_synthrad_domains(cfg.data.synthrad_domains, cfg.data.synthrad_test_domain, cfg.data.synthrad_val_domain)
    if cfg.train.compile and cfg.train.zero_stage == 3:
        raise ConfigError("train.compile=true with train.zero_stage=3: ZeRO-3 gathers parameters in hooks "
                          "that torch.compile cannot trace here; use train.zero_stage=2 or train.compile=false")
    objectives(cfg.tune)
    if cfg.masking.mask_ratio_low > cfg.masking.mask_ratio_high:
        raise ConfigError(
            f"masking.mask_ratio_low={cfg.masking.mask_ratio_low} must be <= masking.mask_ratio_high={cfg.masking.mask_ratio_high}"
        )


def check_finetune_objective(lc: LossConfig) -> None:
    """CMDPI's fine-tuning is Eq. 13 (mix + diff) without a direct answer CE: the two are not mixed.
    Checked where a fine-tuning is planned (``objective.task.plan_passes``, which the driver calls
    before Ray starts), not in ``validate``: an export trained before this rule still loads."""
    if lc.w_ans_finetune > 0 and (lc.w_mix > 0 or lc.w_diff > 0):
        raise ConfigError(
            f"loss.w_ans_finetune={lc.w_ans_finetune} with loss.w_mix={lc.w_mix}, loss.w_diff={lc.w_diff}: CMDPI's "
            "fine-tuning is Eq. 13 (mix + diff) without a direct answer CE; set loss.w_ans_finetune=0, or "
            "loss.w_mix=0 and loss.w_diff=0 for the plain answer-CE fine-tuning"
        )


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML that ``load_config`` reads back to an equal Config."""
    Path(path).write_text(to_yaml(cfg))


def to_yaml(cfg: Config) -> str:
    data = cfg.to_dict()
    top = {k: data.pop(k) for k in TOP_LEVEL}
    return yaml.safe_dump({**top, **data}, sort_keys=False)
