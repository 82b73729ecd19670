"""One trial of a sweep: a *driver function* (Ray Tune's function trainable, which starts Ray Train runs itself) that applies its parameters to the
base config and runs the stages its objective needs — pre-training, then (objective ``finetune``)
fine-tuning from that trial's own export, or from the sweep's one shared pre-training — as Ray
Train runs whose reports reach Tune; a retried trial keeps its finished stages. Also what the
report reads back from Tune's results (``trial_records``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from raymmr import storage
from raymmr.config import Config, objectives
from raymmr.tune.checks import SWEEP_MAY_CHANGE
from raymmr.tune.space import apply_params

# What may differ from a stage's earlier launch when its training is kept: not how long it trains (a
# stage that exported after other steps is trained again).
STAGE_MAY_CHANGE = SWEEP_MAY_CHANGE - {"train.steps", "finetune.steps"}

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


TRIAL_FAILED = "failed.json"  # in a trial's directory: the error that ended it, if retrying cannot change it


def make_trainable(base: Config, out: str, data: str, shared_pretrain: str | None = None, local_cluster: bool = False,
                   launch: str = ""):
    """The Tune trainable: a driver function that runs Ray Train for one trial, its stages under
    ``<out>/trials/<trial id>`` (``out`` a path or URL: the trial may run on any node). With
    ``shared_pretrain`` (a space that only touches fine-tuning), trials fine-tune from that one
    pre-trained export instead of each pre-training the same model again. A retried trial (Tune's
    ``max_failures``, e.g. after a lost node) keeps its finished stages and continues the running
    one from its newest complete checkpoint. A trial that failed with an error retrying cannot change
    (``launch.DETERMINISTIC_ERRORS``: a bad config, missing data) is not run again by this sweep
    ``launch`` (an id of the sweep driver's launch): Tune's retries end at once, naming that error.
    A later launch (``--resume``, maybe after a fix) runs it again."""
    from raymmr.errors import JobError
    from raymmr.train.launch import deterministic, error_line

    def run_trial(params: dict) -> None:
        import ray.tune

        if set(params) == {"params"}:  # a grid point arrives wrapped by tune.grid_search
            params = params["params"]
        trial_id = ray.tune.get_context().get_trial_id()
        trial_dir = storage.join(out, "trials", trial_id)
        storage.write_text(storage.join(trial_dir, "params.json"), json.dumps(params, indent=1))
        failed = storage.join(trial_dir, TRIAL_FAILED)
        if storage.exists(failed):
            record = json.loads(storage.read_text(failed))
            if record.get("launch") == launch:
                raise JobError(f"trial {trial_id} not retried: it failed with an error that fails the same way "
                               f"every time: {record['error']}")
        try:
            cfg = trial_config(base, params)
            stage = functools.partial(run_stage, cfg, data=data, report_to_tune=True, local_cluster=local_cluster)
            init_from = shared_pretrain
            if init_from is None:
                init_from = stage("pretrain", storage.join(trial_dir, "pretrain"), rung_offset=0)
            if cfg.tune.objective == "finetune":
                offset = 0 if shared_pretrain else cfg.tune.rungs
                stage("finetune", storage.join(trial_dir, "finetune"), rung_offset=offset, init_from=init_from)
        except Exception as e:
            if deterministic(e):
                storage.write_text(failed, json.dumps({"launch": launch, "error": error_line(e)}))
            raise

    return run_trial


def run_stage(cfg: Config, stage: str, run: str, data: str, **train_kwargs) -> str:
    """One training stage of the sweep (a trial's, or the shared pre-training) into ``run`` (a path
    or URL); returns its export. A stage that already exported is not trained again, and one that
    was running continues from its newest complete checkpoint, when both were trained from this
    config and data (``launch.run_changes``); one trained from anything else is set aside and
    trained again."""
    from raymmr.rundir import RunDir, set_aside
    from raymmr.train.launch import run_changes, run_training

    if storage.exists(storage.join(run, "config.yaml")):
        changes = run_changes(RunDir(run), cfg, data, STAGE_MAY_CHANGE)
        if changes:  # another launch's stage (the shared pre-training of a sweep restarted with other settings)
            aside = set_aside(run, "superseded")
            print(f"[tune] {run} was trained from something else ({changes}): moved to {aside}, trained again",
                  flush=True)
    export = storage.join(run, storage.EXPORT)
    if storage.exists(storage.join(export, storage.WEIGHTS)):
        if train_kwargs.get("report_to_tune"):
            report_finished_stage(cfg, run, train_kwargs.get("rung_offset", 0))
        return export
    return run_training(cfg, stage=stage, out=run, data=data, resume=can_resume(run),
                        num_workers=cfg.train.num_workers, **train_kwargs).export_dir


def report_finished_stage(cfg: Config, run: str, rung_offset: int) -> None:
    """A stage that exported before the sweep was interrupted is not trained again, but Tune (whose
    state may predate the export) hears its final validation again, from the run's metrics."""
    import ray.tune

    rows = [json.loads(x) for x in storage.read_text(storage.join(run, "metrics.jsonl")).splitlines() if x.strip()]
    validated = [r for r in rows if all(metric in r for metric, _ in objectives(cfg.tune))]
    if validated:
        ray.tune.report({**validated[-1], "rung": rung_offset + cfg.tune.rungs})


def can_resume(run: str) -> bool:
    """Whether a sweep's own run directory holds a complete checkpoint to continue from. One that
    holds only partial checkpoints is moved aside (logs kept) so the stage starts over."""
    from raymmr.rundir import set_aside
    from raymmr.train.checkpoint import checkpoints, latest_complete

    if latest_complete(run) is not None:
        return True
    if checkpoints(run):
        set_aside(run, "interrupted")
    return False


def shared_pretraining(base: Config, out: str, data: str, local_cluster: bool = False) -> str:
    """Pre-train the base config once for a fine-tuning-only sweep (reused on --resume)."""
    run = storage.join(out, "shared_pretrain")
    print(f"[tune] the space only touches fine-tuning: every trial fine-tunes from {run}", flush=True)
    return run_stage(base, "pretrain", run, data, local_cluster=local_cluster)


def trial_records(results, names: str | list[str], max_rung: int) -> list[dict]:
    """One record per trial: parameters, objective (the last reported value of the first metric of
    ``names``, the primary), every metric's last value (``objectives``), rungs reached
    (``iterations``), status."""
    from raymmr.train.launch import error_line

    names = [names] if isinstance(names, str) else list(names)
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
            "objective": metrics.get(names[0]),
            "objectives": {name: metrics.get(name) for name in names},
            "iterations": iterations,
            "status": status,
            "error": error_line(r.error) if r.error else "",
        })
    return records
