"""What a sweep checks before Ray starts: the metric its trials can report (``check_metric``), the
data its objectives need (``check_objectives_data``), how many questions an objective value rests
on (``validation_questions``), and whether ``--out`` holds this sweep, to continue, or another one,
refused (``check_sweep_dir``; ``save_base`` records what a relaunch is held to)."""

from __future__ import annotations

from pathlib import Path

from raymmr import storage
from raymmr.config import Config, ConfigError, objectives, to_yaml
from raymmr.train.launch import RESUME_MAY_CHANGE
from raymmr.tune.space import SearchSpace
from raymmr.tune.study import JOURNAL

# What a sweep's launch may change: how it shares the machine, and what a run's resume may change.
SWEEP_MAY_CHANGE = RESUME_MAY_CHANGE | {"tune.num_samples", "tune.max_concurrent", "tune.trial_cpus"}

def check_metric(base: Config, space: SearchSpace) -> None:
    """``tune.metric`` must be a validation metric every report of every trial carries, and
    ``tune.mode`` its better direction; checked before Ray starts."""
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


BASE_CONFIG = "base_config.yaml"
SPACE_COPY = "space.yaml"  # the sweep's search space, as given


def save_base(base: Config, out: str, space=None) -> None:
    """The sweep's base config and a copy of its search space, beside its trials: a relaunch is
    checked against them (``check_sweep_dir``)."""
    storage.write_text(storage.join(out, BASE_CONFIG), to_yaml(base))
    if space is not None:
        storage.write_text(storage.join(out, SPACE_COPY), Path(space.path).read_text())
