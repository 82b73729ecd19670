"""Ablation: train with and without the Robust-MMR terms (asymmetric perturbation-aware masking,
domain consistency, modality resilience) and with and without the CMDPI fine-tuning terms
(difference reconstruction, head mixup); report cross-domain and perturbed accuracy side by side.

    python jobs/ablate.py --config tiny --out runs/ablation [--variants full,no_robust_mmr] [--seeds 0,1]

Variants that differ only in fine-tuning (full / no_cmdpi_finetune, no_robust_mmr / neither)
share one pre-training per seed. Rerun with the same --out after a failure: finished variants
are read back, finished pre-trainings reused. Writes ablation.json and ablation.md into --out.
"""

import _path  # noqa: F401

from raymmr.cli import base_parser, run_main

VARIANTS = {
    "full": [],
    "no_robust_mmr": ["masking.asymmetric=false", "loss.w_dom_consist=0", "loss.w_mod_resil=0"],
    "no_cmdpi_finetune": ["loss.w_mix=0", "loss.w_diff=0"],
    "neither": ["masking.asymmetric=false", "loss.w_dom_consist=0", "loss.w_mod_resil=0",
                "loss.w_mix=0", "loss.w_diff=0"],
}
COLUMNS = [("vqa_overall", "clean"), ("vqa_in_domain", "train domains"), ("vqa_cross_domain", "unseen domain"),
           ("vqa_overall_perturbed_medium", "perturbed (medium)"),
           ("vqa_overall_perturbed_strong", "perturbed (strong)"),
           ("retrieval_mean_rank", "retrieval mean rank"),
           ("retrieval_mean_rank_perturbed_strong", "mean rank, perturbed (strong)")]


def main() -> None:
    parser = base_parser(__doc__, out_default="runs/ablation")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    parser.add_argument("--seeds", default="0", help="comma list of seeds (train.seed); results are averaged")
    parser.add_argument("--data", help="shard set (default: SynthRad for --config)")
    args = parser.parse_args()
    import json
    import statistics
    import time
    from pathlib import Path

    from raymmr.config import load_config
    from raymmr.pipeline import run_pipeline
    from raymmr.train.launch import JobError, resolve_data
    from raymmr.tune.space import FINETUNE_ONLY_PREFIXES

    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise JobError(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    configs = {(v, s): load_config(args.config, [*args.overrides, *VARIANTS[v], f"train.seed={s}"])
               for v in names for s in seeds}  # validate every variant before training any
    data = resolve_data(configs[(names[0], seeds[0])], args.data)
    out = Path(args.out)
    results = {}
    pretrained = {}  # variants that differ only in fine-tuning share one pre-training per seed
    for (variant, seed), cfg in configs.items():
        shared = (seed, tuple(o for o in VARIANTS[variant] if not o.startswith(FINETUNE_ONLY_PREFIXES)))
        run = out / variant / f"seed{seed}"
        own = run / "pretrain" / "export"
        if (own / "model.safetensors").exists():
            pretrained.setdefault(shared, str(own))
        done = run / "eval" / "results.json"
        if done.exists():  # a rerun after a failure or an interruption keeps what finished
            print(f"[ablate] {variant} seed {seed}: done before, reading {done}", flush=True)
            results[f"{variant}/seed{seed}"] = json.loads(done.read_text())
            continue
        if run.exists():  # an unfinished attempt: kept aside, this variant starts over
            aside = run.with_name(f"{run.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
            run.rename(aside)
            print(f"[ablate] {variant} seed {seed}: moved the unfinished attempt to {aside}", flush=True)
            if str(own) == pretrained.get(shared):
                del pretrained[shared]
        print(f"[ablate] {variant} seed {seed}", flush=True)
        results[f"{variant}/seed{seed}"] = run_pipeline(cfg, run, data, pretrained=pretrained.get(shared))
        pretrained.setdefault(shared, str(own))
    table = {}
    for v in names:
        rows = [results[f"{v}/seed{s}"] for s in seeds]
        table[v] = {k: statistics.fmean(r[k] for r in rows if k in r) for k, _ in COLUMNS if any(k in r for r in rows)}
    (out / "ablation.json").write_text(json.dumps({"per_run": results, "mean": table}, indent=1))
    md = ["| variant | " + " | ".join(label for _, label in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for v in names:
        cells = [("—" if k not in table[v] else (f"{table[v][k]:.2f}" if "rank" in k else f"{100 * table[v][k]:.1f}%"))
                 for k, _ in COLUMNS]
        md.append(f"| {v} | " + " | ".join(cells) + " |")
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    run_main(main)
