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

from raymmr.cli import CLUSTER_FLAGS, add_cluster_args, base_parser, flag_overrides


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

    from raymmr import storage
    from raymmr.config import load_config
    from raymmr.confirm import check_confirmable
    from raymmr.data.sets import resolve_data
    from raymmr.errors import JobError
    from raymmr.rundir import RunDir
    from raymmr.train.launch import check_validation_split
    from raymmr.tune.report import check_some_finished, write_report
    from raymmr.tune.runner import (
        check_metric,
        check_objectives_data,
        check_sweep_dir,
        load_study,
        run_sweep,
        save_base,
        validation_questions,
    )
    from raymmr.tune.space import SpaceError, load_space

    overrides = [*args.overrides, *flag_overrides(args, {
        **CLUSTER_FLAGS, "num_samples": "tune.num_samples", "max_concurrent": "tune.max_concurrent",
        "num_workers": "train.num_workers", "trial_cpus": "tune.trial_cpus", "confirm_top": "tune.confirm_top",
        "confirm_seeds": "tune.confirm_seeds"})]  # fmt: skip
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
        check_confirmable(cfg)
    except SpaceError as e:
        raise JobError(str(e)) from None
    storage.check_run_url(args.out)
    resume = check_sweep_dir(args.out, args.resume, cfg, space)  # before anything is made or written
    data = resolve_data(cfg, args.data)
    check_validation_split(cfg, data, "tune")  # every trial validates: known before Ray starts
    check_objectives_data(cfg, data)
    save_base(cfg, args.out, space)
    records = run_sweep(cfg, space, out=args.out, data=data, num_samples=cfg.tune.num_samples,
                        resume=resume, address=args.address)
    study = load_study(args.out)
    sweep = RunDir(args.out)
    paths = write_report(records, str(sweep.local), base_cfg=cfg, metric=cfg.tune.metric, mode=cfg.tune.mode,
                         study=study, title=f"Sweep over {args.space}", questions=validation_questions(cfg, data))
    for path in paths.values():
        sweep.upload(str(path.relative_to(sweep.local)))
    table = sweep.local / "trials.md"
    if table.exists():
        print(table.read_text())
    print(f"report in {sweep.url}: {', '.join(sorted(str(p.relative_to(sweep.local)) for p in paths.values()))}")
    failed = [r for r in records if r["status"] == "ERROR"]
    if failed:
        print(f"{len(failed)} of {len(records)} trial(s) failed: " + ", ".join(r["trial_id"] for r in failed), flush=True)
    check_some_finished(records)
    if cfg.tune.confirm_top:
        confirm(cfg, records, sweep, data)


def confirm(cfg, records: list[dict], sweep, data: str) -> None:
    """The search's best candidates trained again with several seeds and ranked on validation
    (``raymmr.confirm``); with one objective, ``best_config.yaml`` becomes the confirmed choice and
    that choice, now fixed, is evaluated on the test split once."""
    import json

    from raymmr import storage
    from raymmr.config import objectives
    from raymmr.confirm import CONFIRM_DIR, candidates, confirm_seeds, run_confirmation
    from raymmr.pipeline import FINAL_SPLIT, run_pipeline
    from raymmr.tune.report import pareto_front, write_best_config
    from raymmr.tune.space import apply_params

    named = objectives(cfg.tune)
    chosen = candidates(records, cfg, pareto_front(records, named) if len(named) > 1 else None)
    print(f"[confirm] {len(chosen)} candidate(s) x seeds {cfg.tune.confirm_seeds}, on validation", flush=True)
    ranking = run_confirmation(cfg, chosen, sweep.url, data)
    print(storage.read_text(storage.join(sweep.url, CONFIRM_DIR, "confirm.md")))
    if len(named) > 1:
        print("[confirm] several objectives: the front's configs stay in front/; no single choice is evaluated on test")
        return
    top = ranking["candidates"][0]
    write_best_config(cfg, top["params"], sweep.local / "best_config.yaml")
    best_trial = sweep.local / "best_trial.json"
    summary = json.loads(best_trial.read_text()) if best_trial.exists() else {}
    summary["confirmed"] = {"trial_id": top["trial_id"], "winner": ranking["winner"], "tied": ranking["tied"],
                            "ranking": f"{CONFIRM_DIR}/confirm.json"}  # best_config.yaml is this one
    best_trial.write_text(json.dumps(summary, indent=2) + "\n")
    sweep.upload("best_config.yaml")
    sweep.upload("best_trial.json")
    seed = confirm_seeds(cfg)[0]
    run = storage.join(sweep.url, CONFIRM_DIR, top["trial_id"], f"seed{seed}")
    verdict = "the winner" if ranking["winner"] else f"tied with {', '.join(ranking['tied'][1:])}"
    print(f"[confirm] best_config.yaml: trial {top['trial_id']} ({verdict}); its seed-{seed} run on the test split, "
          "once, with its text-only baseline", flush=True)
    run_pipeline(apply_params(cfg, {**top["params"], "train.seed": seed}), run, data,
                 pretrained=storage.join(run, "pretrain", storage.EXPORT), final_test=True)
    print(storage.read_text(storage.join(run, "eval", FINAL_SPLIT, "results.md")))

