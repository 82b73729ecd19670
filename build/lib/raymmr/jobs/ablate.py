"""Ablation: train with and without the Robust-MMR terms (asymmetric perturbation-aware masking,
domain consistency, modality resilience) and with and without the CMDPI fine-tuning terms
(difference reconstruction, head mixup); report cross-domain and perturbed accuracy side by side.

    python jobs/ablate.py --config tiny --out runs/ablation [--variants full,no_robust_mmr] [--seeds 0,1]

Variants that differ only in fine-tuning (full / no_cmdpi_finetune, no_robust_mmr / neither)
share one pre-training per seed. Rerun with the same --out after a failure: finished variants
are read back, finished pre-trainings reused. Writes ablation.json and ablation.md into --out.
"""

from raymmr.ablation import VARIANTS
from raymmr.cli import base_parser


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__, out_default="runs/ablation")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    parser.add_argument("--seeds", default="0", help="comma list of seeds (train.seed); results are averaged")
    parser.add_argument("--data", help="shard set (default: SynthRad for --config)")
    args = parser.parse_args(argv)
    from raymmr import storage
    from raymmr.ablation import run_ablation

    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    run_ablation(args.config, args.overrides, variants, seeds, args.out, args.data, method=args.method,
                 log=lambda line: print(line, flush=True))  # fmt: skip
    print(storage.read_text(storage.join(storage.normalize(args.out), "ablation.md")))

