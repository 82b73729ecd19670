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
"""

from raymmr.cli import CLUSTER_FLAGS, add_cluster_args, base_parser, flag_overrides


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(__doc__)
    parser.add_argument("--space", required=True, help="search-space YAML file, or the name of one that ships with raymmr "
                        "(raymmr/search_spaces/: loss_weights, mask_ratios, cmdpi_table5, ...)")
    parser.add_argument("--num-samples", type=int, help="trials for a sampled space (default tune.num_samples)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default tune.max_concurrent)")
    parser.add_argument("--trial-cpus", type=float, help="CPUs the trial's driver function reserves")
    parser.add_argument("--resume", action="store_true", help="continue the sweep in --out (the default when --out "
                        "holds one: the same command starts a sweep and continues it)")
    add_cluster_args(parser)
    args = parser.parse_args(argv)

    from raymmr import storage
    from raymmr.config import load_config
    from raymmr.data.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.rundir import RunDir
    from raymmr.train.launch import check_validation_split
    from raymmr.tune.report import check_some_finished, write_report
    from raymmr.tune.runner import check_metric, check_sweep_dir, load_study, run_sweep, save_base
    from raymmr.tune.space import SpaceError, load_space

    overrides = [*args.overrides, *flag_overrides(args, {
        **CLUSTER_FLAGS, "num_samples": "tune.num_samples", "max_concurrent": "tune.max_concurrent",
        "num_workers": "train.num_workers", "trial_cpus": "tune.trial_cpus"})]  # fmt: skip
    try:
        space = load_space(args.space)
        if args.method and space.method and args.method != space.method:
            raise SpaceError(f"{args.space} reproduces method '{space.method}', not --method {args.method}: "
                             f"drop --method or give another space")
        if space.objective:
            overrides.append(f"tune.objective={space.objective}")
        cfg = load_config(args.config, overrides, method=args.method or space.method)
        space.validate_against(cfg)
        check_metric(cfg, space)
    except SpaceError as e:
        raise JobError(str(e)) from None
    storage.check_run_url(args.out)
    resume = check_sweep_dir(args.out, args.resume, cfg, space)  # before anything is made or written
    data = resolve_data(cfg, args.data)
    check_validation_split(cfg, data, "tune")  # every trial validates: known before Ray starts
    save_base(cfg, args.out, space)
    records = run_sweep(cfg, space, out=args.out, data=data, num_samples=cfg.tune.num_samples,
                        resume=resume, address=args.address)
    study = load_study(args.out)
    sweep = RunDir(args.out)
    paths = write_report(records, str(sweep.local), base_cfg=cfg, metric=cfg.tune.metric, mode=cfg.tune.mode,
                         study=study, title=f"Sweep over {args.space}")
    for path in paths.values():
        sweep.upload(path.name)
    table = sweep.local / "trials.md"
    if table.exists():
        print(table.read_text())
    print(f"report in {sweep.url}: {', '.join(sorted(p.name for p in paths.values()))}")
    failed = [r for r in records if r["status"] == "ERROR"]
    if failed:
        print(f"{len(failed)} of {len(records)} trial(s) failed: " + ", ".join(r["trial_id"] for r in failed), flush=True)
    check_some_finished(records)

