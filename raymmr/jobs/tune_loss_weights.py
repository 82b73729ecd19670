"""Search raymmr's loss weights, mask ratios, similarity threshold and mixup distribution with
Ray Tune + Optuna (define-by-run) + ASHA. Each trial is a Ray Train run of the pipeline its
objective needs; the objective is a fixed validation metric (tune.metric), never the loss.

    python jobs/tune_loss_weights.py --space search_spaces/loss_weights.yaml --num-samples 20 --out runs/sweep
    raymmr tune --space loss_weights --num-samples 20 --out runs/sweep     # installed: a shipped space by name
    python jobs/tune_loss_weights.py --space search_spaces/cmdpi_table5.yaml --out runs/table5   # a paper grid
    python jobs/tune_loss_weights.py --space ... --out runs/sweep          # the same command continues an interrupted sweep

--out is a directory or a storage URL (s3://, gs://): Tune's experiment, every trial's runs and the
Optuna study live there, so the same command continues the sweep from any machine (a base config or
space that differs from the sweep's is refused, naming what differs).

Outputs in --out: trials.csv, trials.md (ranked), best_config.yaml (accepted by
jobs/pretrain.py --config as is), plots, and the Optuna study (optuna.journal, study "raymmr").
Several objectives (--set tune.metric=val_vqa_accuracy,val_vqa_accuracy_cross_domain
--set tune.mode=max,max) make a multi-objective sweep: its result is the Pareto front (front.png,
front.json, a config per point in front/) instead of one best config.
"""

from raymmr.cli import CLUSTER_FLAGS, add_cluster_args, base_parser, config_overrides


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--space", required=True, help="search-space YAML file, or the name of one that ships with raymmr "
                        "(raymmr/search_spaces/: loss_weights, mask_ratios, cmdpi_table5, ...)")
    parser.add_argument("--num-samples", type=int, help="trials for a sampled space (default tune.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default tune.max_concurrent)")
    parser.add_argument("--trial-cpus", type=float, help="CPUs the trial's driver function reserves")
    parser.add_argument("--confirm-top", type=int, help="candidates trained again with several seeds and ranked on "
                        "validation after the search (default tune.confirm_top; 0: none)")
    parser.add_argument("--confirm-seeds", help="seeds of the confirmation, e.g. 0,1,2 (default tune.confirm_seeds)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out (the default when --out "
                        "holds one: the same command starts a sweep and continues it)")
    add_cluster_args(parser)
    args = parser.parse_args(argv)

    from raymmr.sweep import run_search

    overrides = config_overrides(args, {
        **CLUSTER_FLAGS, "num_samples": "tune.num_samples", "max_concurrent": "tune.max_concurrent",
        "num_workers": "train.num_workers", "trial_cpus": "tune.trial_cpus", "confirm_top": "tune.confirm_top",
        "confirm_seeds": "tune.confirm_seeds"})  # fmt: skip
    run_search(args.config, overrides, args.space, args.out, method=args.method, data=args.data, resume=args.resume,
               address=args.address)
