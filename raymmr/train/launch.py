"""Driver side of a training job: validate, find the data, start (or join) Ray, fit a
``TorchTrainer`` whose workers run ``raymmr.train.worker.train_loop_per_worker``, then export
consolidated weights. Everything that can be wrong with the input fails here, before Ray asks
for any resource."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from raymmr import storage
from raymmr.config import Config, ConfigError, flatten, load_config, to_yaml, worker_count
from raymmr.data.making.sets import resolve_data
from raymmr.errors import Interrupted, JobError
from raymmr.rundir import RunDir
from raymmr.train import checkpoint as ckpt
from raymmr.train import tracking
from raymmr.train.job import TrainJob


def controller_failure_limit(embedded: bool) -> int:
    """Worker-group starts (60 s each) that may fail before the run is given up, instead of Ray's
    endless retries: 3 on an embedded Ray (no autoscaler will ever add room), 30 on a cluster
    (time for the autoscaler to launch nodes)."""
    return 3 if embedded else 30


@dataclass
class TrainResult:
    run_dir: str
    export_dir: str
    last_metrics: dict


def parse_num_workers(spec: str | int) -> int | tuple[int, int]:
    """``--num-workers`` / ``train.num_workers``: ``"4"`` -> 4; ``"2:8"`` -> (2, 8), Ray Train's
    elastic range (``config.worker_count``)."""
    try:
        return worker_count(spec)
    except ValueError as e:
        raise JobError(f"--num-workers: {e}") from None


_EMBEDDED: dict[str, bool] = {}  # "ray": whether the Ray this process started is embedded


def connect_ray(address: str | None = None, **init_kwargs) -> bool:
    """Join the Ray cluster at ``address`` (else RAY_ADDRESS, set by `ray job submit`) or start an
    embedded local Ray whose dashboard and job server listen on localhost only. Returns True when
    Ray is embedded, also when this process connected earlier (a pipeline's second stage: its fit
    check and notes are an embedded Ray's too). A `ray start` address file left in /tmp/ray is not
    joined silently: the documented default without an address is the embedded Ray."""
    import ray

    if ray.is_initialized():
        return _EMBEDDED.get("ray", False)  # False: Ray was started by another (a Tune trial's worker)
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    try:
        ray.init(address=target, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=True, **init_kwargs)
    except ConnectionError as e:
        if "auth" in repr(e.__cause__).lower() and not os.environ.get("RAY_AUTH_MODE"):
            raise JobError(
                f"the Ray cluster at {target} uses token authentication (Ray's default): run with "
                "RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH "
                "or RAY_AUTH_TOKEN"
            ) from e
        raise
    _EMBEDDED["ray"] = target == "local"
    return target == "local"


GB = 1024**3


def worker_resources(train) -> dict[str, float]:
    """What Ray reserves for each worker of a stage (``train``: the config's train section): CPUs,
    GPUs where asked, host memory (bytes) where ``memory_per_worker_gb`` asks."""
    return {"CPU": train.cpus_per_worker, **({"GPU": train.gpus_per_worker} if train.gpus_per_worker > 0 else {}),
            **({"memory": train.memory_per_worker_gb * GB} if train.memory_per_worker_gb > 0 else {})}


# Each resource Ray reserves for a worker: its name in messages, its unit's size, the flag and the
# config key that lower it.
RESOURCE_NAMES = {"CPU": ("CPU", 1, "--cpus-per-worker", "train.cpus_per_worker"),
                  "GPU": ("GPU", 1, "--gpus-per-worker", "train.gpus_per_worker"),
                  "memory": ("GB of memory", GB, "--set train.memory_per_worker_gb", "train.memory_per_worker_gb")}


def check_fits_locally(workers, per_worker: dict[str, float], available: dict) -> None:
    """An embedded Ray has no autoscaler: a worker group larger than this machine (CPUs, GPUs,
    memory; ``per_worker`` as ``worker_resources`` gives it) would wait forever, so say so before
    fitting."""
    n = workers[0] if isinstance(workers, tuple) else workers
    for resource, need in per_worker.items():
        name, unit, flag, _ = RESOURCE_NAMES[resource]
        have = available.get(resource, 0.0)
        if need > 0 and n * need > have + 1e-9:
            raise JobError(
                f"{n} workers x {need / unit:g} {name} do not fit the local Ray ({have / unit:g} {name}); "
                f"lower --num-workers or {flag}, or pass --address of a cluster"
            )


def warn_local_paths(stage: str, paths: dict) -> None:
    """On a cluster, a local path is read on every node as if it were shared: say so once (one node,
    or a shared filesystem mounted everywhere, is fine; an autoscaler may add nodes later)."""
    local = [f"{flag} {path}" for flag, path in paths.items() if path and not storage.is_remote(path)]
    if local:
        print(f"[{stage}] note: {', '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'} "
              "on a Ray cluster: every node must see the same files there (a shared filesystem). Nodes without "
              "one need storage URLs (s3://, gs://).", flush=True)


def vocab_size(cfg: Config, data: str) -> int:
    from raymmr.data.tokenizer import load_tokenizer, tokenizer_source

    return len(load_tokenizer(tokenizer_source(cfg, data)))


def check_run_dir(run: RunDir, resume: bool = False) -> bool:
    """Whether this launch continues the run in ``run`` (read from the run's storage, the URL, not
    from this machine's staging copy). One command starts a run and continues it (Ray Train V2's
    convention: resubmitting a job continues it from its storage), so a RayJob or a person relaunches
    after a lost driver or head without editing the command: a run that trained is continued
    (``check_resume_matches`` refuses a config or data that would change it), anything else starts.
    ``resume`` (``--resume``) only says the launch means to continue: it is told when there is
    nothing to continue. A run that stopped before its first checkpoint holds nothing to keep."""
    trained = bool(ckpt.checkpoints(run.url)) or run.exists(f"{storage.EXPORT}/{storage.WEIGHTS}")
    if resume and not trained:
        print(f"note: --resume {run}: no checkpoint there yet, so the run starts", flush=True)
    return trained


# What ``--resume`` may change: how long the run is and where and how visibly it runs. Anything else
# (batch, seeds, model, losses, data) would change the sample sequence or what is trained.
RESUME_MAY_CHANGE = frozenset({
    "train.steps", "finetune.steps", "train.num_workers", "train.cpus_per_worker", "train.gpus_per_worker",
    "train.memory_per_worker_gb",
    "train.max_failures", "train.max_nonfinite_steps", "train.log_every", "train.checkpoint_every",
    "train.num_to_keep", "train.tracker", "train.tracking_uri", "train.experiment",
})
RUN_DATA = "data.json"  # in the run: the shard set it trains on (location and fingerprint)


def data_fingerprint(data: str) -> str:
    """What identifies a shard set wherever it lies (SynthRad regenerated on another machine has
    another path, the same manifest): its manifest's splits and answers, else its shard URLs."""
    from raymmr.data.shards import ShardError, read_manifest, shard_urls

    try:
        manifest = read_manifest(data)
        content = {"splits": manifest["splits"], "answers": manifest.get("answers")}
    except ShardError:
        content = {"urls": shard_urls(data, "train")}
    return hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def config_changes(saved_url: str, cfg: Config, may_change=RESUME_MAY_CHANGE) -> str:
    """The keys in which ``cfg`` differs from the config saved at ``saved_url`` (a path or URL), as
    ``key: saved -> now``, comma-separated; "" when none outside ``may_change`` differ."""
    saved = flatten(load_config(saved_url).to_dict())
    now = flatten(cfg.to_dict())
    return ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}"
                     for k in sorted(now) if k not in may_change and saved.get(k) != now[k])


def run_changes(run: RunDir, cfg: Config, data: str, may_change=RESUME_MAY_CHANGE) -> str:
    """What would change the run in ``run`` if it went on with ``cfg`` and ``data``: its config keys
    outside ``may_change`` (``config_changes``) and its shard set, by fingerprint; "" when nothing."""
    changes = []
    if run.exists("config.yaml"):
        changes.append(config_changes(run.url_of("config.yaml"), cfg, may_change))
    if run.exists(RUN_DATA):
        before = json.loads(storage.read_bytes(run.url_of(RUN_DATA)))
        if before["fingerprint"] != data_fingerprint(data):
            changes.append(f"--data {data} is not the shard set the run trained on ({before['data']}, fingerprint "
                           f"{before['fingerprint']})")
    return "; ".join(c for c in changes if c)


def check_resume_matches(run: RunDir, cfg: Config, data: str) -> None:
    """``--resume`` continues the run in ``--out``: refuse a config or a shard set that would change
    it, naming the keys (``RESUME_MAY_CHANGE`` lists what may change)."""
    changes = run_changes(run, cfg, data)
    if changes:
        raise JobError(f"--resume {run}: this launch changes the run ({changes}); resume with the run's own config "
                       f"(--config {run.url_of('config.yaml')}) and data, or start a new --out. A resume may change "
                       f"only {', '.join(sorted(RESUME_MAY_CHANGE))}")


def finished_export(run: RunDir, latest: str, steps: int) -> str | None:
    """The run's export when the run already trained all ``steps`` and exported them (a relaunch
    after the driver was lost past the end), else None."""
    if ckpt.read_meta(latest).step >= steps and run.exists(f"{storage.EXPORT}/{storage.WEIGHTS}"):
        return run.url_of(storage.EXPORT)
    return None


def check_has_samples(data: str, stage: str) -> None:
    """A shard set without one usable sample in the stage's split fails every attempt the same way:
    refuse it before Ray starts (Ray Train would retry it ``train.max_failures`` times). Reads
    records until the first usable one: a few kilobytes of the first shard, normally."""
    from raymmr.data.loader import iter_records
    from raymmr.data.shards import ShardError, read_manifest, shard_urls, training_split
    from raymmr.train.setup import STAGE_KINDS, epoch_samples

    try:
        manifest = read_manifest(data)
    except ShardError:
        manifest = None  # a shard pattern without a manifest beside it
    split = training_split(stage, manifest)
    kinds, entry = STAGE_KINDS[stage], (manifest or {}).get("splits", {}).get(split, {})
    if kinds and "kinds" in entry and epoch_samples(entry, kinds) == 0:
        raise JobError(f"--data {data}: split '{split}' has no {'/'.join(kinds)} sample ({stage} reads only those; "
                       f"it has {entry['kinds']}): a caption-only set is a pre-training corpus")
    urls = shard_urls(data, split)
    if next(iter_records(urls, (manifest or {}).get("fields")), None) is None:
        raise JobError(f"--data {data}: no usable sample in the {len(urls)} shard(s) of split '{split}' (empty, "
                       "or every record failed to decode: see the warnings above); check the conversion that wrote them")


def check_validation_split(cfg: Config, data: str, stage: str) -> None:
    """In-run validation reads split 'val' (or ``data.val_shards``): a set without one would fail
    every attempt in every worker, so refuse it before Ray starts, naming both fixes. Without
    in-run validation (``train.val_every=0``) say that nothing is validated during the run."""
    from raymmr.data.shards import ShardError, read_manifest

    if cfg.train.val_every == 0:
        print(f"[{stage}] note: train.val_every=0: no validation during the run (evaluate the export afterwards)",
              flush=True)
        return
    if cfg.data.val_shards:
        return
    try:
        manifest = read_manifest(data)
    except ShardError:
        return  # a shard pattern without a manifest: its 'val' is the same pattern
    splits = sorted(manifest.get("splits", {}))
    if "val" not in splits:
        raise JobError(
            f"--data {data}: the shard set has no split 'val' (it has {', '.join(splits) or 'none'}), which in-run "
            f"validation (train.val_every={cfg.train.val_every}) reads. Index it with one: "
            f"python jobs/make_shards.py index {data} --val-fraction 0.05; or give --set data.val_shards=<shards>; "
            "or train without in-run validation: --set train.val_every=0"
        )


def generated_here(data: str) -> bool:
    """Whether ``data`` is SynthRad generated into this machine's cache (``resolve_data`` without
    --data): a path no other node has."""
    if storage.is_remote(data):
        return False
    root = (storage.cache_dir() / "synthrad").resolve()
    return Path(data).resolve().parent == root


def share_generated_data(data: str, run_url: str) -> str:
    """SynthRad shards generated on the driver (``generated_here``), for a run on a cluster: the
    workers on other nodes cannot read the driver's disk, so the shards go to object storage first
    (once): under ``$RAYMMR_STORAGE/shards/synthrad/<id>`` when that is set (the cluster configs set
    it), else beside a remote run (``<run>/synthrad``). A local run directory keeps them local (a
    cluster with a shared filesystem; ``warn_local_paths`` says so), and any other shard set is
    returned as it is."""
    from raymmr.data.shards import MANIFEST

    if not generated_here(data):
        return data
    shared_root = os.environ.get("RAYMMR_STORAGE", "")
    if storage.is_remote(shared_root):
        target = storage.join(storage.normalize(shared_root), "shards", "synthrad", Path(data).name)
    elif storage.is_remote(run_url):
        target = storage.join(run_url, "synthrad")
    else:
        return data
    if not storage.exists(storage.join(target, MANIFEST)):  # the manifest goes last: present = complete
        print(f"[data] uploading the SynthRad shards generated here to {target} (workers on other nodes read "
              "them there)", flush=True)
        storage.put(data, target, last=MANIFEST)
    return target


def run_training(
    cfg: Config,
    *,
    stage: str,
    out: str,
    data: str | None = None,
    resume: bool = False,
    init_from: str | None = None,
    num_workers: str | int | None = None,
    address: str | None = None,
    report_to_tune: bool = False,
    rung_offset: int = 0,
    local_cluster: bool = False,
) -> TrainResult:
    """Run one training stage ("pretrain" or "finetune") into ``out`` and export its weights.

    ``report_to_tune``: inside a Ray Tune trial, forward every ``ray.train.report`` to Tune
    (``TuneReportCallback``) so the scheduler sees each validation rung. Reports then carry
    ``rung`` = ``rung_offset`` + the stage's progress in units of ``tune.rungs``: ASHA's clock,
    which (unlike Tune's iteration count) stays right when a trial resumes from a checkpoint.
    ``local_cluster``: Ray is already connected (a Tune trial) to an embedded Ray (no autoscaler)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from raymmr.objective.task import plan_passes
    from raymmr.train.setup import stage_schedule
    from raymmr.train.worker import train_loop_per_worker

    storage.check_run_url(out)
    run = RunDir(out)
    resume = check_run_dir(run, resume)
    workers = parse_num_workers(num_workers if num_workers is not None else cfg.train.num_workers)
    if init_from:
        # An absolute path or URL: Ray workers run in another working directory, on other nodes.
        init_from = storage.require_export(init_from, f"--init {init_from}")
    # Before Ray starts: a step with nothing to train, or CMDPI's Eq. 13 mixed with the plain answer CE.
    plan_passes(stage, cfg.loss, cfg.finetune)
    data = resolve_data(cfg, data)
    check_has_samples(data, stage)
    check_validation_split(cfg, data, stage)
    resume_from = None
    if resume:
        check_resume_matches(run, cfg, data)
        resume_from = ckpt.latest_complete(run.url)
        if resume_from is None:
            raise JobError(f"--out {run} holds only partial checkpoints (every one lacks a rank's part): nothing to "
                           "continue from; remove it or choose a new --out")
        done = finished_export(run, resume_from, stage_schedule(cfg, stage)[0])
        if done is not None:
            print(f"[{stage}] {run} finished its {stage_schedule(cfg, stage)[0]} steps before: its export is {done}",
                  flush=True)
            return TrainResult(run_dir=run.url, export_dir=done, last_metrics={})
        print(f"[{stage}] continuing {run} from {resume_from}", flush=True)
    run.write_text("config.yaml", to_yaml(cfg))
    embedded = connect_ray(address) or local_cluster
    if not embedded:
        data = share_generated_data(data, run.url)
    run.write_text(RUN_DATA, json.dumps({"data": data, "fingerprint": data_fingerprint(data)}))

    # A Tune trial is tracked by the sweep's logger callback, one tracker run per trial.
    tracker = None if report_to_tune else tracking.start_run(cfg, stage, run)
    if tracker is not None:
        print(f"[{stage}] {tracker.describe()}", flush=True)
        if not embedded and tracker.kind == "mlflow" and tracking.is_local(tracker.uri):
            print(f"warning: the MLflow store {tracking.redact(tracker.uri)} is on this machine's disk: workers on other nodes "
                  "cannot log to it; give a server with --set train.tracking_uri=http://... or MLFLOW_TRACKING_URI",
                  file=sys.stderr, flush=True)
    job = TrainJob(
        cfg=cfg,
        stage=stage,
        run_dir=run.url,
        launch=launch_name(resume),
        data=data,
        vocab_size=vocab_size(cfg, data),
        init_from=init_from,
        # Ray Train V2 has no resume_from_checkpoint: the worker loads this one itself when Ray
        # has no newer checkpoint of this launch (ray-project/ray#49454).
        resume_from=resume_from,
        rung_offset=rung_offset if report_to_tune else None,
        key_log=os.environ.get("RAYMMR_KEY_LOG"),
        tracker=tracker,
    )
    gpus = cfg.train.gpus_per_worker
    if embedded:
        check_fits_locally(workers, worker_resources(cfg.train), ray.cluster_resources())
    else:
        warn_local_paths(stage, {"--data": data, "--out": run.url, "--init": init_from})

    def trainer_for(job: TrainJob) -> TorchTrainer:
        return TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"job": job},
            torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo", timeout_s=1800),
            scaling_config=ScalingConfig(
                num_workers=workers,
                use_gpu=gpus > 0,
                resources_per_worker=worker_resources(cfg.train),
            ),
            run_config=RunConfig(
                storage_path=run.url,
                name=job.launch,
                # Ray itself retries only preemptions it was told of (max_preemption_failures: no
                # limit); every other failure comes back here (``fit_until_done``). A worker group
                # that can never start (too large for the cluster) fails instead of waiting forever.
                failure_config=FailureConfig(max_failures=0,
                                             controller_failure_limit=controller_failure_limit(embedded)),
                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
                worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cfg.train.cpus_per_worker))),
                                                 **tracking.worker_env(cfg)}},
                callbacks=[TuneReportCallback()] if report_to_tune else None,
            ),
        )

    try:
        try:
            result = fit_until_done(trainer_for, job, run, max_stalled=cfg.train.max_failures)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the run keeps its checkpoints in {run}: the same command continues it") from None
        export_dir = export_latest(cfg, run, data, stage)
    except BaseException as e:  # the MLflow run is closed as killed or failed; a relaunch reopens it
        try:
            tracking.finish_run(tracker, export_dir=None, status="KILLED" if isinstance(e, Interrupted) else "FAILED")
        except Exception as closing:  # noqa: BLE001 - the training error is the one to report
            print(f"warning: could not close {tracker.describe()}: {closing}", file=sys.stderr, flush=True)
        raise
    tracking.finish_run(tracker, export_dir=str(run.local / storage.EXPORT))
    return TrainResult(run_dir=run.url, export_dir=export_dir, last_metrics=dict(result.metrics or {}))


def launch_name(resume: bool) -> str:
    """A fresh Ray Train run name per launch and per retry: Ray Train V2 silently resumes a reused name."""
    return f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}" + ("-resume" if resume else "")


# Worker errors that fail every attempt the same way (the input's fault, not the cluster's).
DETERMINISTIC_ERRORS = (JobError, ConfigError, ckpt.CheckpointError)
RETRY_WAIT_S = (0, 15, 60, 300)  # before retry k of a run that made no progress since the last failure


def deterministic(error: BaseException) -> bool:
    """Whether a failed fit was a deterministic error on some worker (the others fail in its wake:
    a collective aborted by the rank that raised). Follows Ray's wrappers down to the cause."""
    failures = getattr(error, "worker_failures", None) or {}
    for e in [error, *failures.values()]:
        seen: set[int] = set()
        while e is not None and id(e) not in seen:
            if isinstance(e, DETERMINISTIC_ERRORS):
                return True
            seen.add(id(e))
            # Ray Train wraps a worker's exception (UserExceptionWithTraceback._base_exc); Ray's task
            # errors keep theirs in .cause.
            e = getattr(e, "_base_exc", None) or getattr(e, "cause", None) or e.__cause__
    return False


def error_line(error: BaseException) -> str:
    """The last non-empty line of an error: the worker's own exception, where Ray wraps it in a
    header line and tracebacks (a failed fit, a failed sweep trial)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def fit_until_done(trainer_for, job, run: RunDir, *, max_stalled: int, sleep=time.sleep):
    """Fit, and after a failure fit again from the newest complete checkpoint, as long as the run
    makes progress: a week-long run on spot capacity outlives any fixed number of preemptions, and
    a failure that recurs without a new checkpoint in between is retried at most ``max_stalled``
    times in a row (-1: forever), waiting longer each time (``RETRY_WAIT_S``). A deterministic error
    (``DETERMINISTIC_ERRORS``) stops the run at its first occurrence. Returns Ray's result."""
    import dataclasses

    def newest_step() -> tuple[str | None, int]:
        latest = ckpt.latest_complete(run.url)
        return latest, (ckpt.read_meta(latest).step if latest else 0)

    _, reached = newest_step()
    stalled = 0
    while True:
        try:
            result = trainer_for(job).fit()
            if result.error:
                raise result.error
            return result
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - classified below, re-raised unless retried
            if deterministic(e):
                raise
            latest, step = newest_step()
            stalled = 0 if step > reached else stalled + 1
            if max_stalled != -1 and stalled > max_stalled:
                print(f"[{job.stage}] {stalled} failures in a row without a new checkpoint (train.max_failures="
                      f"{max_stalled}): giving up", file=sys.stderr, flush=True)
                raise
            wait = RETRY_WAIT_S[min(stalled, len(RETRY_WAIT_S) - 1)]
            error = error_line(e)
            print(f"[{job.stage}] training failed at checkpoint step {step} ({error}); continuing from "
                  f"{latest or 'the start'}" + (f" in {wait} s" if wait else "")
                  + f" ({stalled} failure(s) in a row without progress)", flush=True)
            run.append_lines("events.jsonl", [json.dumps(
                {"event": "retry", "checkpoint_step": step, "stalled": stalled, "error": error})])
            sleep(wait)
            reached = step
            job = dataclasses.replace(job, launch=launch_name(True), resume_from=latest or job.resume_from)


def export_latest(cfg: Config, run: RunDir, data: str, stage: str) -> str:
    """Consolidate the newest complete checkpoint (DeepSpeed ``zero_to_fp32``) into
    ``<run>/export``: model.safetensors + resolved config + tokenizer + answer vocabulary."""
    import torch

    from raymmr.data.tokenizer import exportable_tokenizer
    from raymmr.model.export import save_export
    from raymmr.train.setup import new_model

    latest = ckpt.latest_complete(run.url)  # read from the storage Ray persisted it to
    if latest is None:
        raise JobError(f"{run}: training finished without a complete checkpoint to export")
    local = ckpt.local_copy(latest)
    model, tokenizer, manifest = new_model(cfg, data)
    state = ckpt.consolidate(local)
    # DeepSpeed's zero_to_fp32 mixes up the shapes of empty parameters (the answer head of a
    # caption-only shard set, 0 answers): an empty tensor holds no value, take its shape from the model.
    state.update({k: torch.empty_like(v) for k, v in model.state_dict().items() if v.numel() == 0})
    model.load_state_dict(state, strict=True)
    export_dir = run.local / storage.EXPORT
    save_export(model, cfg, export_dir, tokenizer=exportable_tokenizer(cfg, data, tokenizer), answers=manifest["answers"],
                stage=stage)
    verify_export(cfg, export_dir, local / ckpt.PROBE, vocab_size=len(tokenizer))
    run.upload(storage.EXPORT)
    return run.url_of(storage.EXPORT)


def verify_export(cfg: Config, export_dir: Path, probe_path: Path, *, vocab_size: int) -> float:
    """Reload the export as inference does and compare with the live model's probe outputs;
    returns the largest absolute difference (bf16 training compares against an fp32 export)."""
    import torch
    from safetensors.torch import load_file

    from raymmr.model.model import load_export
    from raymmr.train.worker import probe_inputs, probe_outputs

    if not probe_path.exists():
        raise JobError(f"{probe_path} is missing: the newest checkpoint is not the one the workers wrote "
                       "at the end of training")
    live = load_file(str(probe_path))
    model, _, _ = load_export(str(export_dir))
    model.eval()
    with torch.no_grad():
        mine = probe_outputs(model, probe_inputs(cfg, vocab_size=vocab_size, device="cpu"))
    shapes = [k for k in live if mine[k].shape != live[k].shape]
    if shapes:
        raise JobError(f"exported weights in {export_dir} give outputs of other shapes than the live model: {shapes}")
    diff = max(((mine[k].float() - live[k]).abs().max().item() for k in live if live[k].numel()), default=0.0)
    tol = 5e-2 if cfg.train.precision == "bf16" or cfg.train.gpus_per_worker > 0 else 1e-4
    if diff > tol:
        raise JobError(f"exported weights in {export_dir} do not reproduce the live model (max |diff| {diff:.2e})")
    print(f"export verified against the live model: max |diff| {diff:.2e}", flush=True)
    return diff


