"""Hyper-parameter sweeps: Ray Tune + Optuna (define-by-run) + ASHA over Ray Train trials.

Each trial is a *driver function* (RAY_NOTES): it applies its parameters to the base config and
runs the pipeline its objective needs — pre-training, then (objective ``finetune``) fine-tuning
from that trial's own export — as Ray Train runs whose reports reach Tune through
``TuneReportCallback``. Every report carries the fixed validation metric (``tune.metric``,
held-out VQA accuracy by default), so ASHA compares trials at each rung on the same footing;
the weighted training loss is never the objective (its weights differ between trials).
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path

from raymmr import storage
from raymmr.config import Config, objectives, to_yaml
from raymmr.train import tracking
from raymmr.train.launch import RESUME_MAY_CHANGE
from raymmr.tune.space import SearchSpace, apply_params

STUDY_NAME = "raymmr"
# What a sweep's launch may change: how it shares the machine, and what a run's resume may change.
SWEEP_MAY_CHANGE = RESUME_MAY_CHANGE | {"tune.num_samples", "tune.max_concurrent", "tune.trial_cpus"}
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


def check_metric(base: Config, space: SearchSpace) -> None:
    """``tune.metric`` must be a validation metric every report of every trial carries, and
    ``tune.mode`` its better direction; checked before Ray starts."""
    from raymmr.config import ConfigError
    from raymmr.objective.task import FINETUNE_TERMS, PRETRAIN_TERMS

    t = base.tune
    stages = [PRETRAIN_TERMS] if t.objective == "pretrain" else [FINETUNE_TERMS]
    if t.objective == "finetune" and space.touches_pretraining:
        stages.append(PRETRAIN_TERMS)  # such trials also report while they pre-train
    searched = set(space.keys())
    # A loss term is reported only when its weight is not 0, so only fixed, non-zero weights qualify.
    terms = set.intersection(*({term for term, w in s.items()
                                if f"loss.{w}" not in searched and getattr(base.loss, w) > 0} for s in stages))
    from raymmr.eval.metrics import better as direction

    better = {**{m: direction(m) for m in ("val_vqa_accuracy", "val_vqa_accuracy_cross_domain", "val_retrieval_mean_rank")},
              **{f"val_{x}": direction(f"val_{x}", loss=True) for x in terms}}
    if t.objective == "finetune":
        # Fine-tuning reads VQA samples only (train.setup.STAGE_KINDS), validation included: it ranks
        # no caption, and a trial's last reports would carry no retrieval metric at all.
        del better["val_retrieval_mean_rank"]
    named = objectives(t)
    if len({metric for metric, _ in named}) < len(named):
        raise ConfigError(f"tune.metric={t.metric} names a metric twice")
    for metric, mode in named:
        if metric == "val_loss":
            raise ConfigError("tune.metric=val_loss is the weighted loss: it moves with the weights being searched, "
                              "so trials would not be comparable. Use val_vqa_accuracy or val_retrieval_mean_rank")
        if metric == "val_retrieval_mean_rank" and t.objective == "finetune":
            raise ConfigError("tune.metric=val_retrieval_mean_rank with tune.objective=finetune: fine-tuning "
                              "validates on VQA samples only, so it ranks no caption; use val_vqa_accuracy, or "
                              "tune.objective=pretrain to search pre-training on retrieval")
        if metric not in better:
            raise ConfigError(f"tune.metric={metric!r} is not reported at every rung of these trials; "
                              f"choose from {sorted(better)}")
        if mode != better[metric]:
            raise ConfigError(f"tune.mode={mode} with tune.metric={metric}: it is better when "
                              f"{'higher' if better[metric] == 'max' else 'lower'}; set tune.mode={better[metric]}")


def validation_questions(cfg: Config, data: str) -> int | None:
    """How many VQA questions one in-run validation of a trial answers (its objective's sample
    size): ``train.val_batches`` x ``batch_size`` x workers (the smallest group), all VQA when the
    trials fine-tune, the validation split's VQA share when they pre-train; None when unknown."""
    from raymmr.config import worker_count
    from raymmr.data.shards import ShardError, read_manifest

    workers = worker_count(cfg.train.num_workers)
    n = cfg.train.val_batches * cfg.train.batch_size * (workers[0] if isinstance(workers, tuple) else workers)
    if cfg.tune.objective == "finetune":
        return n
    try:
        kinds = read_manifest(data)["splits"]["val"].get("kinds") or {}
    except (ShardError, KeyError):
        return None
    total = sum(kinds.values())
    return round(n * kinds.get("vqa", 0) / total) if total else None


def check_objectives_data(cfg: Config, data: str) -> None:
    """A sweep on ``val_vqa_accuracy_cross_domain`` needs a validation split with a domain the
    train split lacks (else no trial reports it): refused before Ray starts, naming the fix."""
    from raymmr.data.shards import ShardError, read_manifest, training_domains
    from raymmr.errors import JobError

    if "val_vqa_accuracy_cross_domain" not in dict(objectives(cfg.tune)) or cfg.data.val_shards:
        return
    try:
        manifest = read_manifest(data)
    except ShardError:
        return  # a shard pattern without a manifest: no domains recorded, nothing to check
    val = set(manifest.get("splits", {}).get("val", {}).get("domains", []))
    trained = training_domains(manifest)
    if not trained or not val - trained:
        raise JobError(f"tune.metric=val_vqa_accuracy_cross_domain: the validation split of {data} has no domain "
                       f"the train split lacks (val: {sorted(val) or 'none recorded'}, train: "
                       f"{sorted(trained) or 'none recorded'}); give shards whose 'val' holds a domain training never "
                       "sees (SynthRad: data.synthrad_val_domain)")


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


JOURNAL = "optuna.journal"


def optuna_storage(journal: str | Path):
    """A journal file: optuna.load_study(study_name="raymmr", storage=optuna_storage(path)) reads it."""
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))


def load_study(out: str):
    """The sweep's Optuna study (from the sweep's URL or directory), or None for grid sweeps
    (which run without Optuna)."""
    import optuna

    from raymmr.rundir import RunDir

    journal = RunDir(out).fetch(JOURNAL, keep_local=True)
    if not journal.exists():
        return None
    return optuna.load_study(study_name=STUDY_NAME, storage=optuna_storage(journal))


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the space: a third of the budget, 2 to 10. Optuna's fixed 10
    made TPE random search at any budget of 10 trials or fewer (the search-efficiency benchmark's
    TPE and random searches of 5 trials drew the same five points)."""
    return min(10, max(2, num_samples // 3))


def study_search(space: SearchSpace, t, sweep_url: str, num_samples: int | None = None):
    """Tune's OptunaSearch with its study in the sweep's journal, which reaches the sweep URL after
    every finished trial and before every snapshot of Tune's searcher state (so the URL's journal
    is never older than the snapshot a resumed sweep restores); a sweep resumed on another machine
    reads the study from there."""
    import optuna as ot
    from ray.tune.search.optuna import OptunaSearch

    from raymmr.rundir import RunDir

    class StudySearch(OptunaSearch):
        def on_trial_complete(self, trial_id, result=None, error=False):
            super().on_trial_complete(trial_id, result=result, error=error)
            RunDir(sweep_url).upload(JOURNAL)

        def save(self, checkpoint_path):
            RunDir(sweep_url).upload(JOURNAL)
            super().save(checkpoint_path)

        def restore(self, checkpoint_path):
            # The pickled study points at the journal path of the machine that wrote it.
            super().restore(checkpoint_path)
            self._storage = optuna_storage(RunDir(sweep_url).fetch(JOURNAL, keep_local=True))
            self._ot_study = ot.load_study(study_name=STUDY_NAME, storage=self._storage,
                                           sampler=self._ot_study.sampler)
            for trial in self._ot_trials.values():
                trial.study, trial.storage = self._ot_study, self._storage
            # The journal may be newer than Tune's searcher state: a trial asked after the last
            # experiment snapshot was lost with the driver and will never report. Close it as
            # failed instead of leaving it RUNNING in the study forever.
            known = {trial.number for trial in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(ot.trial.TrialState.RUNNING,))
            for orphan in (t for t in running if t.number not in known):
                print(f"[tune] Optuna trial {orphan.number} was started by the lost driver and never recorded "
                      "by Tune: marked FAIL; Tune asks for a new one in its place")
                self._ot_study.tell(orphan.number, state=ot.trial.TrialState.FAIL)
            # And a trial the lost driver finished after that snapshot: Tune runs it on from its newest
            # checkpoint, but the study already holds its outcome and refuses further reports
            # (UpdateFinishedTrialError ended the resumed sweep). The study keeps the first outcome.
            finished = {s.number: s.state.name for s in self._ot_study.get_trials(deepcopy=False)
                        if s.state.is_finished()}
            for trial_id, trial in self._ot_trials.items():
                if trial.number in finished and trial_id not in self._completed_trials:
                    print(f"[tune] trial {trial_id} (Optuna trial {trial.number}) ended as {finished[trial.number]} "
                          "in the study before the driver was lost; Tune runs it on, the study keeps that outcome")
                    self._completed_trials.add(trial_id)

    journal = RunDir(sweep_url).fetch(JOURNAL, keep_local=True)
    # With a define-by-run space, metric/mode must be given to OptunaSearch itself; several make a
    # multi-objective study (Optuna's TPE sampler handles several objectives).
    metrics, modes = zip(*objectives(t))
    metric, mode = (metrics[0], modes[0]) if len(metrics) == 1 else (list(metrics), list(modes))
    if t.sampler == "random":
        sampler = ot.samplers.RandomSampler(seed=t.seed)
    else:
        startup = tpe_startup_trials(num_samples or t.num_samples)
        sampler = ot.samplers.TPESampler(seed=t.seed, n_startup_trials=startup)
    return StudySearch(space=space.define_by_run, metric=metric, mode=mode, sampler=sampler,
                       study_name=STUDY_NAME, storage=optuna_storage(journal))


def check_sweep_dir(out: str, resume: bool, base: Config, space) -> bool:
    """Whether this launch continues the sweep in ``out``. As for training jobs, one command starts
    a sweep and continues it: a sweep Tune can restore is continued when its base config and search
    space are this launch's (anything else would mix another sweep's trials into this one's study
    and report: refused, naming what differs); else the sweep starts, and the study of one that
    stopped before Tune's first snapshot (trials asked, none recorded) goes, here and in the cache.
    ``resume`` (``--resume``) only says the launch means to continue."""
    from ray import tune

    from raymmr.errors import JobError
    from raymmr.rundir import RunDir
    from raymmr.train.launch import config_changes

    out = storage.normalize(out)
    experiment = storage.join(out, "tune")
    sweep = RunDir(out)
    if tune.Tuner.can_restore(experiment):
        if sweep.exists(BASE_CONFIG):
            diffs = config_changes(sweep.url_of(BASE_CONFIG), base, SWEEP_MAY_CHANGE)
            if diffs:
                raise JobError(f"--out {out} holds a sweep with another base config ({diffs}); continue it with "
                               f"its own (--config {sweep.url_of(BASE_CONFIG)}) or choose a new --out")
        if sweep.exists(SPACE_COPY):
            before = storage.read_bytes(sweep.url_of(SPACE_COPY)).decode()
            if before != Path(space.path).read_text():
                raise JobError(f"--out {out} holds a sweep over another search space (its copy: "
                               f"{sweep.url_of(SPACE_COPY)}); continue it with that space or choose a new --out")
        print(f"[tune] continuing the sweep in {out}", flush=True)
        return True
    if resume:
        print(f"note: --resume {out}: no sweep to continue there yet, so it starts", flush=True)
    storage.remove(sweep.url_of(JOURNAL))
    (sweep.local / JOURNAL).unlink(missing_ok=True)
    return False


def fit_to_machine(cfg: Config, resources: dict, log=print) -> Config:
    """An embedded Ray has no autoscaler: trials (each its own CPU + its workers) that do not fit
    the machine would wait forever. Share the machine's CPUs among ``tune.max_concurrent`` trials
    (workers get at least half a CPU each; fewer trials at once where that does not fit), run no
    more trials at once than the GPUs and the memory hold; refuse what cannot fit at all, with the
    numbers."""
    from raymmr.config import ConfigError
    from raymmr.train.launch import GB, RESOURCE_NAMES, parse_num_workers, worker_resources

    tr, t = cfg.train, cfg.tune
    workers = parse_num_workers(tr.num_workers)
    workers = workers[0] if isinstance(workers, tuple) else workers
    cpus = resources.get("CPU", 0.0)
    concurrent = t.max_concurrent
    for resource, need in worker_resources(tr).items():
        if resource == "CPU" or need <= 0:
            continue
        name, unit, _, key = RESOURCE_NAMES[resource]
        have = resources.get(resource, 0.0)
        if need * workers > have + 1e-9:
            raise ConfigError(f"a trial's {workers} workers x {need / unit:g} {name} do not fit this machine "
                              f"({have / unit:g} {name}); lower {key} or pass --address of a cluster")
        # a trial waiting for a GPU or memory that never frees fails its placement
        concurrent = min(concurrent, max(1, int(have / (workers * need) + 1e-9)))
    min_cpw = min(0.5, tr.cpus_per_worker)
    if t.trial_cpus + workers * min_cpw > cpus + 1e-9:
        raise ConfigError(f"a trial needs {t.trial_cpus:g} CPU + {workers} workers x at least {min_cpw:g} CPU; "
                          f"this machine has {cpus:g} CPU: lower train.num_workers or pass --address of a cluster")
    while concurrent > 1 and t.trial_cpus + workers * min_cpw > cpus / concurrent + 1e-9:
        concurrent -= 1
    # Two decimals, rounded down: the shares must not add up to more than the machine.
    cpw = min(tr.cpus_per_worker, int(100 * (cpus / concurrent - t.trial_cpus) / workers) / 100)
    changes = {}
    if cpw != tr.cpus_per_worker:
        changes["train.cpus_per_worker"] = cpw
    if concurrent != t.max_concurrent:
        changes["tune.max_concurrent"] = concurrent
    if changes:
        log(f"[tune] fitted to this machine ({cpus:g} CPU, {resources.get('GPU', 0.0):g} GPU, "
            f"{resources.get('memory', 0.0) / GB:.1f} GB of memory, embedded Ray): "
            + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return apply_params(cfg, changes) if changes else cfg


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


def pin_autoscaling_coordinator() -> None:
    """Create Ray's detached AutoscalingCoordinator actor here, on the driver's node (the head,
    under `ray job submit`), before any trial does. Ray Train creates it, if it does not exist,
    on the node of whoever asks first, pinned there for the cluster's life; in a sweep that is a
    trial's Train controller, on a worker node, which then never counts as idle and is never
    scaled down (ray-project/ray#58481; tests/test_autoscaling.py shows it)."""
    # Private module: Ray 2.60's location of the singleton that Train's resource requests go to.
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


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


BASE_CONFIG = "base_config.yaml"
SPACE_COPY = "space.yaml"  # the sweep's search space, as given


def save_base(base: Config, out: str, space=None) -> None:
    """The sweep's base config and a copy of its search space, beside its trials: a relaunch is
    checked against them (``check_sweep_dir``)."""
    storage.write_text(storage.join(out, BASE_CONFIG), to_yaml(base))
    if space is not None:
        storage.write_text(storage.join(out, SPACE_COPY), Path(space.path).read_text())
