"""The ablation: the pipeline with and without the Robust-MMR group (asymmetric perturbation-aware
masking, domain consistency, modality resilience, perturbed fine-tuning inputs) and the CMDPI
fine-tuning group (difference reconstruction + head mixup, replaced by the plain answer CE),
reported side by side on clean, cross-domain and perturbed data, mean ± std over seeds. Each arm
removes exactly its groups, as ``raymmr.config.METHOD_GROUPS`` defines them.

The ablation is read on the validation split (its reading is a choice: SPEC §5); it never
evaluates the test split. Each seed fine-tunes one text-only model (blank images, from the first
variant's pre-training) that every variant of the seed is compared with.

Variants that differ only in fine-tuning share one pre-training per seed. A rerun into the same
directory reads back finished variants and reuses finished pre-trainings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from raymmr import storage
from raymmr.config import load_config, without_groups
from raymmr.rundir import set_aside
from raymmr.tune.space import FINETUNE_ONLY_PREFIXES

VARIANTS: dict[str, tuple[str, ...]] = {  # arm -> the method groups it removes
    "full": (),
    "no_robust_mmr": ("robust_mmr",),
    "no_cmdpi_finetune": ("cmdpi_finetune",),
    "neither": ("robust_mmr", "cmdpi_finetune"),
}


def variant_overrides(variant: str) -> list[str]:
    return [f"{key}={value}" for key, value in without_groups(VARIANTS[variant]).items()]


COLUMNS = [("vqa_overall", "clean"), ("vqa_in_domain", "train domains"), ("vqa_cross_domain", "unseen domain"),
           ("vqa_overall_perturbed_medium", "perturbed (medium)"),
           ("vqa_overall_perturbed_strong", "perturbed (strong)"),
           ("retrieval_mean_rank", "retrieval mean rank"),
           ("retrieval_mean_rank_perturbed_strong", "mean rank, perturbed (strong)")]  # fmt: skip


def run_ablation(
    preset: str,
    overrides: list[str],
    variants: list[str],
    seeds: list[int],
    out: str | Path,
    data: str | None = None,
    log=print,
    method: str | None = None,
) -> dict:
    """Train and evaluate every (variant, seed); writes ablation.json and ablation.md into ``out``
    (a path or URL: every run of the ablation lives under it) and returns ``{"per_run": ..., "mean": {variant: {column: value}}}``."""
    from raymmr.data.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.pipeline import SELECTION_SPLIT, run_pipeline

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise JobError(f"--variants: unknown {unknown or variants}; choose from {list(VARIANTS)}")
    configs = {
        (v, s): load_config(preset, [*overrides, *variant_overrides(v), f"train.seed={s}"], method=method)
        for v in variants for s in seeds
    }  # validate every variant before training any
    data = resolve_data(configs[(variants[0], seeds[0])], data)
    out = storage.normalize(str(out))
    results, pretrained = {}, {}  # pretrained: (seed, pre-training overrides) -> export
    text_only: dict[int, str] = {}  # seed -> the text-only model's export
    for (variant, seed), cfg in configs.items():
        shared = (seed, tuple(o for o in variant_overrides(variant) if not o.startswith(FINETUNE_ONLY_PREFIXES)))
        run = storage.join(out, variant, f"seed{seed}")
        own = storage.join(run, "pretrain", storage.EXPORT)
        if storage.exists(storage.join(own, storage.WEIGHTS)):
            pretrained.setdefault(shared, own)
        done = storage.join(run, "eval", SELECTION_SPLIT, "results.json")
        own_text_only = storage.join(run, "finetune_text_only", storage.EXPORT)
        if storage.exists(storage.join(own_text_only, storage.WEIGHTS)):
            text_only.setdefault(seed, own_text_only)
        if storage.exists(done):
            log(f"[ablate] {variant} seed {seed}: done before, reading {done}")
            results[f"{variant}/seed{seed}"] = json.loads(storage.read_text(done))
            continue
        if storage.exists(run):  # an unfinished attempt: kept aside, this variant starts over
            aside = set_aside(run, "unfinished")
            log(f"[ablate] {variant} seed {seed}: moved the unfinished attempt to {aside}")
            if pretrained.get(shared) == own:
                del pretrained[shared]
            if text_only.get(seed) == own_text_only:
                del text_only[seed]
        log(f"[ablate] {variant} seed {seed}")
        results[f"{variant}/seed{seed}"] = run_pipeline(cfg, run, data, pretrained=pretrained.get(shared),
                                                        text_only=text_only.get(seed, True))[SELECTION_SPLIT]
        pretrained.setdefault(shared, own)
        text_only.setdefault(seed, own_text_only)
    mean = {v: mean_columns([results[f"{v}/seed{s}"] for s in seeds]) for v in variants}
    std = {v: std_columns([results[f"{v}/seed{s}"] for s in seeds]) for v in variants}
    report = {"per_run": results, "mean": mean, "std": std, "seeds": seeds}
    storage.write_text(storage.join(out, "ablation.json"), json.dumps(report, indent=1))
    storage.write_text(storage.join(out, "ablation.md"), markdown(mean, std))
    return report


def mean_columns(runs: list[dict]) -> dict:
    """The mean over seeds of each reported column a run has."""
    return {k: statistics.fmean(r[k] for r in runs if k in r) for k, _ in COLUMNS if any(k in r for r in runs)}


def std_columns(runs: list[dict]) -> dict:
    """The sample standard deviation over seeds of each column that two or more runs have."""
    return {k: statistics.stdev(r[k] for r in runs if k in r) for k, _ in COLUMNS
            if sum(k in r for r in runs) >= 2}  # fmt: skip


def markdown(mean: dict, std: dict | None = None) -> str:
    """The side-by-side table: accuracies in percent, mean ranks as numbers, "mean ± std" where
    there are several seeds, — where missing."""
    std = std or {}

    def cell(variant: str, k: str) -> str:
        if k not in mean[variant]:
            return "—"
        scale, fmt = (1, ".2f") if "rank" in k else (100, ".1f")
        text = f"{scale * mean[variant][k]:{fmt}}"
        if k in std.get(variant, {}):
            text += f" ± {scale * std[variant][k]:{fmt}}"
        return text + ("" if "rank" in k else "%")

    lines = ["| variant | " + " | ".join(label for _, label in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for variant in mean:
        lines.append(f"| {variant} | " + " | ".join(cell(variant, k) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
