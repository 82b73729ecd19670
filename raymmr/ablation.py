"""The ablation: the pipeline with and without the Robust-MMR group (asymmetric perturbation-aware
masking, domain consistency, modality resilience, perturbed fine-tuning inputs) and the CMDPI
fine-tuning group (difference reconstruction + head mixup, replaced by the plain answer CE),
reported side by side on clean, cross-domain and perturbed data, mean ± std over seeds. Each arm
removes exactly its groups, as ``raymmr.config.METHOD_GROUPS`` defines them.

The ablation is read on the validation split (its reading is a choice: docs/SPEC.md §5); it never
evaluates the test split. Each seed fine-tunes one text-only model (blank images, from the first
variant's pre-training) that every variant of the seed is compared with.

Variants that differ only in fine-tuning share one pre-training per seed. A rerun into the same
directory reads back finished variants and reuses finished pre-trainings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from raymmr import storage
from raymmr.config import load_config, without_groups
from raymmr.pipeline import SELECTION_SPLIT
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
           ("vqa_overall_unseen_jpeg_bias", "unseen: JPEG + bias field"),
           ("vqa_overall_unseen_typos", "unseen: typos"),
           ("retrieval_mean_rank", "retrieval mean rank"),
           ("retrieval_mean_rank_perturbed_strong", "mean rank, perturbed (strong)")]  # fmt: skip
# The paired comparisons, question by question (the evaluation's questions.jsonl): column -> (the
# set whose correctness is compared, the questions it is compared on).
PAIRED = {"clean": ("clean", None), "train domains": ("clean", True), "unseen domain": ("clean", False),
          "perturbed (strong)": ("strong", None), "unseen: JPEG + bias field": ("jpeg_bias", None),
          "unseen: typos": ("typos", None)}
REFERENCE = "full"  # every other variant is paired against it


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
    from raymmr.data.making.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.pipeline import run_pipeline
    from raymmr.train.launch import connect_ray, share_generated_data

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise JobError(f"--variants: unknown {unknown or variants}; choose from {list(VARIANTS)}")
    configs = {
        (v, s): load_config(preset, [*overrides, *variant_overrides(v), f"train.seed={s}"], method=method)
        for v in variants for s in seeds
    }  # validate every variant before training any
    data = resolve_data(configs[(variants[0], seeds[0])], data)
    out = storage.normalize(str(out))
    if not connect_ray():  # on a cluster: once, where every node reads it
        data = share_generated_data(data, out)
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
    paired = paired_differences(out, variants, seeds)
    report = {"per_run": results, "mean": mean, "std": std, "seeds": seeds, "split": SELECTION_SPLIT,
              "paired": paired}
    storage.write_text(storage.join(out, "ablation.json"), json.dumps(report, indent=1))
    storage.write_text(storage.join(out, "ablation.md"), markdown(mean, std) + paired_markdown(paired, seeds))
    return report


def paired_differences(out: str, variants: list[str], seeds: list[int], n_boot: int = 1000) -> dict:
    """Each variant minus ``REFERENCE`` on the same questions, per ``PAIRED`` column: the mean over
    seeds of the per-question difference (each seed's two arms trained with that seed), with a 95%
    interval that resamples images and seeds (``ImageBootstrap.seeded_interval``). Empty when the
    reference or the questions files are missing (runs evaluated before they were written)."""
    from raymmr.eval.metrics import ImageBootstrap

    if REFERENCE not in variants:
        return {}
    from raymmr.eval.evaluate import read_questions

    runs = {(v, s): read_questions(storage.join(out, v, f"seed{s}", "eval", SELECTION_SPLIT))
            for v in variants for s in seeds}
    if any(q is None for q in runs.values()):
        return {}
    keys = sorted(runs[(REFERENCE, seeds[0])])
    rows = [runs[(REFERENCE, seeds[0])][k] for k in keys]
    boot = ImageBootstrap([q["image"] for q in rows], n_boot=n_boot)
    in_domain = np.array([q["in_domain"] for q in rows])
    out_table: dict = {}
    for variant in variants:
        if variant == REFERENCE:
            continue
        cells = {}
        for column, (name, domain) in PAIRED.items():
            if name not in rows[0]["correct"] or (domain is not None and not (in_domain == domain).any()):
                continue
            diffs = [[runs[(variant, s)][k]["correct"][name] - runs[(REFERENCE, s)][k]["correct"][name] for k in keys]
                     for s in seeds]
            mean, ci = boot.seeded_interval(diffs, None if domain is None else in_domain == domain)
            cells[column] = {"mean": mean, "ci": list(ci)}
        out_table[variant] = cells
    return out_table


def paired_markdown(paired: dict, seeds: list[int]) -> str:
    """The paired table: each variant minus the reference, in accuracy points, with its interval;
    "no effect shown" where the interval holds 0."""
    if not paired:
        return ""
    columns = [c for c in PAIRED if any(c in cells for cells in paired.values())]
    lines = ["", f"Paired against `{REFERENCE}` on the same validation questions (accuracy points, mean over "
             f"{len(seeds)} seed(s); 95% interval resampling images and seeds):", "",
             "| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]

    def cell(d: dict | None) -> str:
        if d is None:
            return "—"
        m, (lo, hi) = d["mean"], d["ci"]
        shown = "" if lo > 0 or hi < 0 else " (no effect shown)"
        return f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{shown}"

    for variant, cells in paired.items():
        lines.append(f"| {variant} − {REFERENCE} | " + " | ".join(cell(cells.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


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
