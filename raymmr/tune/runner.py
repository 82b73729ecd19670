"""Hyper-parameter sweeps: Ray Tune + Optuna (define-by-run) + ASHA over Ray Train trials
(``run_sweep``). Its pieces have rooms of their own: the checks before Ray starts (``checks``),
one trial (``trial``), the Optuna study (``study``), where trials run (``resources``).

Each trial is a *driver function* (``trial``): it applies its parameters to the base config and
runs the pipeline its objective needs — pre-training, then (objective ``finetune``) fine-tuning
from that trial's own export — as Ray Train runs whose reports reach Tune through
``TuneReportCallback``. Every report carries the fixed validation metric (``tune.metric``,
held-out VQA accuracy by default), so ASHA compares trials at each rung on the same footing;
the weighted training loss is never the objective (its weights differ between trials).
"""

from __future__ import annotations

import uuid

from raymmr import storage
from raymmr.config import Config, objectives
from raymmr.train import tracking
from raymmr.tune.checks import check_metric
from raymmr.tune.resources import fit_to_machine, pin_autoscaling_coordinator
from raymmr.tune.space import SearchSpace
from raymmr.tune.study import study_search
from raymmr.tune.trial import make_trainable, shared_pretraining, trial_records


def run_sweep(
    base: Config,
    space: SearchSpace,
    *,
    out: str,
    data: str,
    num_samples: int,
    resume: bool = False,
    address: str | None = None,
    pretrained: str | None = None,
) -> list[dict]:
    """Run (or resume) a sweep into ``out`` (a path or URL: Tune's experiment, the trials' runs and
    the Optuna journal all live there; ``check_sweep_dir`` first); returns one record per trial for
    the report. ``pretrained``: the export every trial of a fine-tuning-only space fine-tunes from
    (default: the sweep's own shared pre-training, made here once)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from raymmr.train.launch import connect_ray, share_generated_data

    out = storage.normalize(out)
    check_metric(base, space)
    embedded = connect_ray(address)
    if embedded:
        base = fit_to_machine(base, ray.cluster_resources())
    else:
        pin_autoscaling_coordinator()
        data = share_generated_data(data, out)  # trial drivers and workers run on other nodes
    t = base.tune
    shared = None
    if t.objective == "finetune" and not space.touches_pretraining:
        shared = pretrained or shared_pretraining(base, out, data, local_cluster=embedded)
    launch = uuid.uuid4().hex[:12]  # this launch of the sweep (make_trainable: no retry of a deterministic error)
    trainable = tune.with_resources(make_trainable(base, out, data, shared, local_cluster=embedded, launch=launch),
                                    {"cpu": t.trial_cpus})
    max_rung = t.rungs * (2 if t.objective == "finetune" and shared is None else 1)
    experiment = storage.join(out, "tune")
    if resume:
        # Experiment state is pickled by Ray; restore only sweeps this user wrote (trusted paths).
        # Errored trials run again: they continue from their checkpoints (see make_trainable).
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        named = objectives(t)
        if len(named) > 1 and t.scheduler == "asha":
            # ASHA compares trials on one metric: it would stop the very trials that give it up for
            # another objective, the other end of the front. So several objectives: no early stopping.
            print(f"[tune] {len(named)} objectives ({t.metric}): every trial runs to its end (ASHA ranks on one "
                  "metric and would stop the trials that trade it for another)", flush=True)
        if t.scheduler == "asha" and len(named) == 1:
            # Time is the trial's own "rung" (progress in validation reports, see run_training), not
            # Tune's iteration count, which restarts when a trial resumes. stop_last_trials=False: a trial
            # at its last rung runs to its end, so its export (and a fine-tune after pre-training) is written.
            scheduler = ASHAScheduler(time_attr="rung", max_t=max_rung, stop_last_trials=False,
                                      grace_period=min(t.grace_period, max_rung), reduction_factor=t.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        if space.is_grid:
            param_space = {"params": tune.grid_search(space.grid_points())}
            search_alg, samples = None, 1
        else:
            param_space = None
            search_alg, samples = study_search(space, t, out, num_samples), num_samples
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            # One objective: Tune's metric (ASHA ranks on it); several: only the searcher knows them.
            tune_config=tune.TuneConfig(metric=t.metric if len(named) == 1 else None,
                                        mode=t.mode if len(named) == 1 else None, scheduler=scheduler,
                                        search_alg=search_alg, num_samples=samples,
                                        max_concurrent_trials=t.max_concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=out, callbacks=tracking.sweep_callbacks(base, out),
                                      failure_config=tune.FailureConfig(max_failures=t.max_failures)),
        )
    results = tuner.fit()
    return trial_records(results, [metric for metric, _ in objectives(t)], max_rung=max_rung)
