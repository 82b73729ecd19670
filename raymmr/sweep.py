"""A sweep from start to end, the one library call of ``jobs/tune_loss_weights.py``: the space and
config checked before Ray starts, the search (``tune.runner``, with ``tune.checks`` first), its report (``tune.report``), the
confirmation of its best candidates (``confirm``) and, once that has fixed the choice, the one
evaluation of it on the test split (``pipeline``)."""

from __future__ import annotations

from collections.abc import Sequence


def run_search(config: str, overrides: Sequence[str], space_name: str, out: str, *, method: str | None = None,
               data: str | None = None, resume: bool = False, address: str | None = None) -> list[dict]:
    """Search ``space_name`` (a file or a shipped space's name) from the base ``config`` (a preset
    or file, with ``overrides``) into ``out`` (a directory or storage URL; a sweep there is
    continued); returns the trial records. Refused before Ray starts (``JobError``, naming what to
    fix): a space of another method, a metric the trials cannot report, an ``out`` holding another
    sweep, a shard set without the validation the objectives need."""
    from raymmr import storage
    from raymmr.data.making.sets import resolve_data
    from raymmr.train.launch import check_validation_split
    from raymmr.tune.checks import check_objectives_data, check_sweep_dir, save_base
    from raymmr.tune.report import check_some_finished
    from raymmr.tune.runner import run_sweep

    cfg, space = sweep_config(config, overrides, space_name, method)
    storage.check_run_url(out)
    resume = check_sweep_dir(out, resume, cfg, space)  # before anything is made or written
    data = resolve_data(cfg, data)
    check_validation_split(cfg, data, "tune")  # every trial validates: known before Ray starts
    check_objectives_data(cfg, data)
    save_base(cfg, out, space)
    records = run_sweep(cfg, space, out=out, data=data, num_samples=cfg.tune.num_samples,
                        resume=resume, address=address)
    sweep = report(records, cfg, out, data, title=f"Sweep over {space_name}")
    check_some_finished(records)
    if cfg.tune.confirm_top:
        confirm(cfg, records, sweep, data)
    return records


def sweep_config(config: str, overrides: Sequence[str], space_name: str, method: str | None = None):
    """-> (the sweep's base config, its search space), each checked against the other."""
    from raymmr.config import load_config
    from raymmr.confirm import check_confirmable
    from raymmr.errors import JobError
    from raymmr.tune.checks import check_metric
    from raymmr.tune.space import SpaceError, load_space

    overrides = list(overrides)
    try:
        space = load_space(space_name)
        if method and space.method and method != space.method:
            raise SpaceError(f"{space_name} reproduces method '{space.method}', not --method {method}: "
                             f"drop --method or give another space")
        if space.objective:
            overrides.append(f"tune.objective={space.objective}")
        cfg = load_config(config, overrides, method=method or space.method)
        space.validate_against(cfg)
        check_metric(cfg, space)
        check_confirmable(cfg)
    except SpaceError as e:
        raise JobError(str(e)) from None
    return cfg, space


def report(records: list[dict], cfg, out: str, data: str, *, title: str):
    """The search's report (``tune.report.write_report``) written into ``out`` and printed; returns
    the sweep's ``RunDir``."""
    from raymmr.rundir import RunDir
    from raymmr.tune.checks import validation_questions
    from raymmr.tune.report import write_report
    from raymmr.tune.study import load_study

    sweep = RunDir(out)
    paths = write_report(records, str(sweep.local), base_cfg=cfg, metric=cfg.tune.metric, mode=cfg.tune.mode,
                         study=load_study(out), title=title, questions=validation_questions(cfg, data))
    for path in paths.values():
        sweep.upload(str(path.relative_to(sweep.local)))
    table = sweep.local / "trials.md"
    if table.exists():
        print(table.read_text())
    print(f"report in {sweep.url}: {', '.join(sorted(str(p.relative_to(sweep.local)) for p in paths.values()))}")
    failed = [r for r in records if r["status"] == "ERROR"]
    if failed:
        print(f"{len(failed)} of {len(records)} trial(s) failed: " + ", ".join(r["trial_id"] for r in failed), flush=True)
    return sweep


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

