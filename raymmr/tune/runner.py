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


def make_trainable(base: Config, out: str, data: str, shared_pretrain: str | None = None):
    """The Tune trainable: a driver function that runs Ray Train for one trial. With
    ``shared_pretrain`` (a space that only touches fine-tuning), trials fine-tune from that one
    pre-trained export instead of each pre-training the same model again."""

    def run_trial(params: dict) -> None:
        import ray.tune  # noqa: PLC0415

        from raymmr.train.launch import run_training  # noqa: PLC0415

        if set(params) == {"params"}:  # a grid point arrives wrapped by tune.grid_search
            params = params["params"]
        cfg = trial_config(base, params)
        trial_dir = Path(out) / "trials" / ray.tune.get_context().get_trial_id()
        (trial_dir).mkdir(parents=True, exist_ok=True)
        (trial_dir / "params.json").write_text(json.dumps(params, indent=1))
        init_from = shared_pretrain
        if init_from is None:
            pre = run_training(cfg, stage="pretrain", out=str(trial_dir / "pretrain"), data=data,
                               num_workers=cfg.train.num_workers, report_to_tune=True)
            init_from = pre.export_dir
        if cfg.tune.objective == "finetune":
            run_training(cfg, stage="finetune", out=str(trial_dir / "finetune"), data=data,
                         init_from=init_from, num_workers=cfg.train.num_workers, report_to_tune=True)

    return run_trial


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
    out = str(Path(out).resolve())
    connect_ray(address)
    shared = None
    if t.objective == "finetune" and not space.touches_pretraining:
        shared = shared_pretraining(base, out, data)
    trainable = tune.with_resources(make_trainable(base, out, data, shared), {"cpu": t.trial_cpus})
    reports = t.rungs * (2 if t.objective == "finetune" and shared is None else 1)
    experiment = str(Path(out) / "tune")
    if resume:
        if not tune.Tuner.can_restore(experiment):
            raise FileNotFoundError(f"--resume: no sweep to restore under {experiment}")
        # Experiment state is pickled by Ray; restore only sweeps this user wrote (trusted paths).
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=False)
    else:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports,
                                  grace_period=min(t.grace_period, reports), reduction_factor=t.reduction_factor)
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
    return trial_records(results, t.metric, max_t=reports)


def shared_pretraining(base: Config, out: str, data: str) -> str:
    """Pre-train the base config once for a fine-tuning-only sweep (reused on --resume)."""
    from raymmr.train.launch import run_training  # noqa: PLC0415

    run = Path(out) / "shared_pretrain"
    export = run / "export"
    if (export / "model.safetensors").exists():
        return str(export)
    print(f"[tune] the space only touches fine-tuning: pre-training once into {run}", flush=True)
    return run_training(base, stage="pretrain", out=str(run), data=data, num_workers=base.train.num_workers,
                        resume=run.exists()).export_dir


def trial_records(results, metric: str, max_t: int) -> list[dict]:
    """One record per trial: parameters, objective (last reported metric), rungs, status."""
    records = []
    for r in results:
        params = r.config or {}
        if set(params) == {"params"}:
            params = params["params"]
        metrics = r.metrics or {}
        iterations = metrics.get("training_iteration", 0)
        if r.error:
            status = "ERROR"
        elif iterations < max_t:
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
