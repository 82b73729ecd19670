"""The ablation: the pipeline with and without the Robust-MMR terms (asymmetric perturbation-aware
masking, domain consistency, modality resilience) and the CMDPI fine-tuning terms (difference
reconstruction, head mixup), reported side by side on clean, cross-domain and perturbed data.

Variants that differ only in fine-tuning share one pre-training per seed. A rerun into the same
directory reads back finished variants and reuses finished pre-trainings."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from raymmr.config import load_config
from raymmr.train.rundir import set_aside
from raymmr.tune.space import FINETUNE_ONLY_PREFIXES

ROBUST_MMR_OFF = ["masking.asymmetric=false", "loss.w_dom_consist=0", "loss.w_mod_resil=0"]
CMDPI_FINETUNE_OFF = ["loss.w_mix=0", "loss.w_diff=0"]
VARIANTS = {
    "full": [],
    "no_robust_mmr": ROBUST_MMR_OFF,
    "no_cmdpi_finetune": CMDPI_FINETUNE_OFF,
    "neither": [*ROBUST_MMR_OFF, *CMDPI_FINETUNE_OFF],
}
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
) -> dict:
    """Train and evaluate every (variant, seed); writes ablation.json and ablation.md into ``out``
    and returns ``{"per_run": ..., "mean": {variant: {column: value}}}``."""
    from raymmr.pipeline import run_pipeline  # noqa: PLC0415
    from raymmr.train.launch import JobError, resolve_data  # noqa: PLC0415

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise JobError(f"--variants: unknown {unknown or variants}; choose from {list(VARIANTS)}")
    configs = {
        (v, s): load_config(preset, [*overrides, *VARIANTS[v], f"train.seed={s}"]) for v in variants for s in seeds
    }  # validate every variant before training any
    data = resolve_data(configs[(variants[0], seeds[0])], data)
    out = Path(out)
    results, pretrained = {}, {}  # pretrained: (seed, pre-training overrides) -> export
    for (variant, seed), cfg in configs.items():
        shared = (seed, tuple(o for o in VARIANTS[variant] if not o.startswith(FINETUNE_ONLY_PREFIXES)))
        run = out / variant / f"seed{seed}"
        own = run / "pretrain" / "export"
        if (own / "model.safetensors").exists():
            pretrained.setdefault(shared, str(own))
        done = run / "eval" / "results.json"
        if done.exists():
            log(f"[ablate] {variant} seed {seed}: done before, reading {done}")
            results[f"{variant}/seed{seed}"] = json.loads(done.read_text())
            continue
        if run.exists():  # an unfinished attempt: kept aside, this variant starts over
            aside = set_aside(run, "unfinished")
            log(f"[ablate] {variant} seed {seed}: moved the unfinished attempt to {aside}")
            if pretrained.get(shared) == str(own):
                del pretrained[shared]
        log(f"[ablate] {variant} seed {seed}")
        results[f"{variant}/seed{seed}"] = run_pipeline(cfg, run, data, pretrained=pretrained.get(shared))
        pretrained.setdefault(shared, str(own))
    mean = {v: mean_columns([results[f"{v}/seed{s}"] for s in seeds]) for v in variants}
    report = {"per_run": results, "mean": mean}
    (out / "ablation.json").write_text(json.dumps(report, indent=1))
    (out / "ablation.md").write_text(markdown(mean))
    return report


def mean_columns(runs: list[dict]) -> dict:
    """The mean over seeds of each reported column a run has."""
    return {k: statistics.fmean(r[k] for r in runs if k in r) for k, _ in COLUMNS if any(k in r for r in runs)}


def markdown(mean: dict) -> str:
    """The side-by-side table: accuracies in percent, mean ranks as numbers, — where missing."""
    lines = ["| variant | " + " | ".join(label for _, label in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for variant, row in mean.items():
        cells = ["—" if k not in row else (f"{row[k]:.2f}" if "rank" in k else f"{100 * row[k]:.1f}%")
                 for k, _ in COLUMNS]  # fmt: skip
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
