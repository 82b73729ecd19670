"""Hyper-parameter sweeps: Ray Tune + Optuna (define-by-run) + ASHA over Ray Train trials.

Each trial is a *driver function* (RAY_NOTES): it applies its parameters to the base config and
runs the pipeline its objective needs — pre-training, then (objective ``finetune``) fine-tuning
from that trial's own export — as Ray Train runs whose reports reach Tune through
``TuneReportCallback``. Every report carries the fixed validation metric (``tune.metric``,
held-out VQA accuracy by default), so ASHA compares trials at each rung on the same footing;
the weighted training loss is never the objective (its weights differ between trials).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raymmr.config import Config, to_yaml
from raymmr.tune.space import SearchSpace, apply_params

STUDY_NAME = "raymmr"


def trial_config(base: Config, params: dict) -> Config:
    """The trial's config: its parameters, and validation + checkpoints at every rung."""
    cfg = apply_params(base, params)
    t = cfg.tune
    for stage_steps in (cfg.train.steps, cfg.finetune.steps):
        if stage_steps and stage_steps < t.rungs:
            raise ValueError(f"{stage_steps} steps cannot hold tune.rungs={t.rungs} validation reports")
    steps = cfg.train.steps if t.objective == "pretrain" else min(cfg.train.steps, cfg.finetune.steps)
    every = max(1, steps // t.rungs)
    # One report per rung, each with a checkpoint and the validation metric.
    return apply_params(cfg, {"train.val_every": every, "train.checkpoint_every": every})


def check_metric(base: Config, space: SearchSpace) -> None:
    """``tune.metric`` must be a validation metric every report of every trial carries, and
    ``tune.mode`` its better direction; checked before Ray starts."""
    from raymmr.config import ConfigError  # noqa: PLC0415
    from raymmr.model.task import FINETUNE_TERMS, PRETRAIN_TERMS  # noqa: PLC0415

    t = base.tune
    if t.metric == "val_loss":
        raise ConfigError("tune.metric=val_loss is the weighted loss: it moves with the weights being searched, "
                          "so trials would not be comparable. Use val_vqa_accuracy or val_retrieval_mean_rank")
    stages = [PRETRAIN_TERMS] if t.objective == "pretrain" else [FINETUNE_TERMS]
    if t.objective == "finetune" and space.touches_pretraining:
        stages.append(PRETRAIN_TERMS)  # such trials also report while they pre-train
    searched = set(space.keys())
    # A loss term is reported only when its weight is not 0, so only fixed, non-zero weights qualify.
    terms = set.intersection(*({term for term, w in s.items()
                                if f"loss.{w}" not in searched and getattr(base.loss, w) > 0} for s in stages))
    better = {"val_vqa_accuracy": "max", "val_retrieval_mean_rank": "min", **{f"val_{x}": "min" for x in terms}}
    if t.metric not in better:
        raise ConfigError(f"tune.metric={t.metric!r} is not reported at every rung of these trials; "
                          f"choose from {sorted(better)}")
    if t.mode != better[t.metric]:
        raise ConfigError(f"tune.mode={t.mode} with tune.metric={t.metric}: it is better when "
                          f"{'higher' if better[t.metric] == 'max' else 'lower'}; set tune.mode={better[t.metric]}")


def make_trainable(base: Config, out: str, data: str, shared_pretrain: str | None = None):
    """The Tune trainable: a driver function that runs Ray Train for one trial. With
    ``shared_pretrain`` (a space that only touches fine-tuning), trials fine-tune from that one
    pre-trained export instead of each pre-training the same model again."""

    def run_trial(params: dict) -> None:
        import ray.tune  # noqa: PLC0415

        if set(params) == {"params"}:  # a grid point arrives wrapped by tune.grid_search
            params = params["params"]
        cfg = trial_config(base, params)
        trial_dir = Path(out) / "trials" / ray.tune.get_context().get_trial_id()
        (trial_dir).mkdir(parents=True, exist_ok=True)
        (trial_dir / "params.json").write_text(json.dumps(params, indent=1))
        init_from = shared_pretrain
        if init_from is None:
            init_from = run_stage(cfg, "pretrain", trial_dir / "pretrain", data, report_to_tune=True, rung_offset=0)
        if cfg.tune.objective == "finetune":
            offset = 0 if shared_pretrain else cfg.tune.rungs
            run_stage(cfg, "finetune", trial_dir / "finetune", data, report_to_tune=True, rung_offset=offset,
                      init_from=init_from)

    return run_trial


def run_stage(cfg: Config, stage: str, run: Path, data: str, **train_kwargs) -> str:
    """One training stage of the sweep (a trial's, or the shared pre-training) into ``run``;
    returns its export. After ``--resume`` a stage that already exported is not trained again,
    and one that was running continues from its newest complete checkpoint."""
    from raymmr.train.launch import run_training  # noqa: PLC0415

    if (run / "export" / "model.safetensors").exists():
        return str(run / "export")
    return run_training(cfg, stage=stage, out=str(run), data=data, resume=can_resume(run),
                        num_workers=cfg.train.num_workers, **train_kwargs).export_dir


def can_resume(run: Path) -> bool:
    """Whether a sweep's own run directory holds a complete checkpoint to continue from. One that
    stopped before its first checkpoint is moved aside (logs kept) so the stage starts over."""
    from raymmr.train.checkpoint import latest_complete  # noqa: PLC0415
    from raymmr.train.rundir import set_aside  # noqa: PLC0415

    if not run.exists():
        return False
    if latest_complete(run) is not None:
        return True
    set_aside(run, "interrupted")
    return False


def optuna_storage(out: str):
    """A journal file: optuna.load_study(study_name="raymmr", storage=optuna_storage(out)) reads it."""
    import optuna  # noqa: PLC0415

    path = Path(out) / "optuna.journal"
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def load_study(out: str):
    """The sweep's Optuna study, or None for grid sweeps (which run without Optuna)."""
    import optuna  # noqa: PLC0415

    if not (Path(out) / "optuna.journal").exists():
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=optuna_storage(out))


def run_sweep(
    base: Config,
    space: SearchSpace,
    *,
    out: str,
    data: str,
    num_samples: int,
    resume: bool = False,
    address: str | None = None,
) -> list[dict]:
    """Run (or resume) a sweep into ``out``; returns one record per trial for the report."""
    from ray import tune  # noqa: PLC0415
    from ray.tune.schedulers import ASHAScheduler  # noqa: PLC0415
    from ray.tune.search.optuna import OptunaSearch  # noqa: PLC0415

    from raymmr.train.launch import connect_ray  # noqa: PLC0415

    t = base.tune
    check_metric(base, space)
    out = str(Path(out).resolve())
    connect_ray(address)
    shared = None
    if t.objective == "finetune" and not space.touches_pretraining:
        shared = shared_pretraining(base, out, data)
    trainable = tune.with_resources(make_trainable(base, out, data, shared), {"cpu": t.trial_cpus})
    max_rung = t.rungs * (2 if t.objective == "finetune" and shared is None else 1)
    experiment = str(Path(out) / "tune")
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise FileNotFoundError(f"--resume: no sweep to restore under {experiment}")
        # Experiment state is pickled by Ray; restore only sweeps this user wrote (trusted paths).
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=False)
    else:
        # Time is the trial's own "rung" (progress in validation reports, see run_training), not
        # Tune's iteration count, which restarts when a trial resumes. stop_last_trials=False: a trial
        # at its last rung runs to its end, so its export (and a fine-tune after pre-training) is written.
        scheduler = ASHAScheduler(time_attr="rung", max_t=max_rung, stop_last_trials=False,
                                  grace_period=min(t.grace_period, max_rung), reduction_factor=t.reduction_factor)
        if space.is_grid:
            param_space = {"params": tune.grid_search(space.grid_points())}
            search_alg, samples = None, 1
        else:
            param_space = None
            # With a define-by-run space, metric/mode must be given to OptunaSearch itself.
            search_alg = OptunaSearch(space=space.define_by_run, metric=t.metric, mode=t.mode, seed=t.seed,
                                      study_name=STUDY_NAME, storage=optuna_storage(out))
            samples = num_samples
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, scheduler=scheduler, search_alg=search_alg,
                                        num_samples=samples, max_concurrent_trials=t.max_concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=out,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    results = tuner.fit()
    return trial_records(results, t.metric, max_rung=max_rung)


def shared_pretraining(base: Config, out: str, data: str) -> str:
    """Pre-train the base config once for a fine-tuning-only sweep (reused on --resume)."""
    run = Path(out) / "shared_pretrain"
    print(f"[tune] the space only touches fine-tuning: every trial fine-tunes from {run}", flush=True)
    return run_stage(base, "pretrain", run, data)


def trial_records(results, metric: str, max_rung: int) -> list[dict]:
    """One record per trial: parameters, objective (last reported metric), rungs reached
    (``iterations``), status."""
    records = []
    for r in results:
        params = r.config or {}
        if set(params) == {"params"}:
            params = params["params"]
        metrics = r.metrics or {}
        rung = round(float(metrics.get("rung", 0)), 2)
        iterations = int(rung) if rung.is_integer() else rung  # rungs reached: 3, or 2.5 mid-rung
        if r.error:
            status = "ERROR"
        elif rung < max_rung - 1e-6:
            status = "STOPPED_EARLY"  # by ASHA
        else:
            status = "COMPLETED"
        records.append({
            "trial_id": metrics.get("trial_id") or Path(r.path).name,
            "params": params,
            "objective": metrics.get(metric),
            "iterations": iterations,
            "status": status,
        })
    return records


def save_base(base: Config, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    Path(out, "base_config.yaml").write_text(to_yaml(base))
