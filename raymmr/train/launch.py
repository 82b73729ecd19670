"""Driver side of a training job: validate, find the data, start (or join) Ray, fit a
``TorchTrainer`` whose workers run ``raymmr.train.worker.train_loop_per_worker``, then export
consolidated weights. Everything that can be wrong with the input fails here, before Ray asks
for any resource."""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from raymmr import storage
from raymmr.config import Config, to_yaml
from raymmr.data.sets import resolve_data
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
    """``"4"`` -> 4; ``"2:8"`` -> (2, 8), Ray Train's elastic range."""
    if isinstance(spec, int):
        return spec
    try:
        if ":" in spec:
            lo, hi = (int(x) for x in spec.split(":"))
            if not 1 <= lo <= hi:
                raise ValueError
            return (lo, hi)
        n = int(spec)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise JobError(f"--num-workers {spec!r}: expected N or MIN:MAX with 1 <= MIN <= MAX") from None


def connect_ray(address: str | None = None, **init_kwargs) -> bool:
    """Join the Ray cluster at ``address`` (else RAY_ADDRESS, set by `ray job submit`) or start an
    embedded local Ray whose dashboard and job server listen on localhost only. Returns True when
    Ray is embedded. A `ray start` address file left in /tmp/ray is not joined silently: the
    documented default without an address is the embedded Ray."""
    import ray

    if ray.is_initialized():
        return False
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
    return target == "local"


def check_fits_locally(workers, cpus: float, gpus: float, available: dict) -> None:
    """An embedded Ray has no autoscaler: a worker group larger than this machine would wait
    forever, so say so before fitting."""
    n = workers[0] if isinstance(workers, tuple) else workers
    for name, per_worker, flag in (("CPU", cpus, "--cpus-per-worker"), ("GPU", gpus, "--gpus-per-worker")):
        have = available.get(name, 0.0)
        if per_worker > 0 and n * per_worker > have + 1e-9:
            raise JobError(
                f"{n} workers x {per_worker:g} {name} do not fit the local Ray ({have:g} {name}); "
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


def check_run_dir(run: RunDir, resume: bool) -> None:
    """A new launch must not write over a run that trained; ``--resume`` needs a checkpoint. Both
    are read from the run's storage (the URL), not from this machine's staging copy. A run that
    stopped before its first checkpoint holds nothing to keep: launching again starts it over."""
    trained = bool(ckpt.checkpoints(run.url)) or run.exists(f"{storage.EXPORT}/{storage.WEIGHTS}")
    if trained and not resume:
        raise JobError(
            f"--out {run} already holds a run; pass --resume {run} to continue it, or choose a new --out"
        )
    if resume and not trained:
        raise JobError(f"--resume {run}: no checkpoint there; launch it again without --resume to start over")


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


def share_generated_data(data: str, run_url: str) -> str:
    """SynthRad shards generated on the driver, for a run on a cluster: the workers on other nodes
    cannot read the driver's disk, so the shards go to object storage first (once): under
    ``$RAYMMR_STORAGE/shards/synthrad/<id>`` when that is set (the cluster configs set it), else
    beside a remote run (``<run>/synthrad``). A local run directory keeps them local (a cluster
    with a shared filesystem; ``warn_local_paths`` says so)."""
    from raymmr.data.shards import MANIFEST, upload_dir

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
        upload_dir(data, target)
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
    from raymmr.train.worker import train_loop_per_worker

    run = RunDir(out)
    check_run_dir(run, resume)
    workers = parse_num_workers(num_workers if num_workers is not None else cfg.train.num_workers)
    if init_from:
        # An absolute path or URL: Ray workers run in another working directory, on other nodes.
        found = storage.find_export(init_from)
        if found is None:
            raise JobError(f"--init {init_from}: no {storage.WEIGHTS} there or in its export/ folder")
        init_from = found
    # Before Ray starts: a step with nothing to train, or CMDPI's Eq. 13 mixed with the plain answer CE.
    plan_passes(stage, cfg.loss, cfg.finetune)
    generated = not (data or cfg.data.train_shards)  # SynthRad, made on this machine
    data = resolve_data(cfg, data)
    check_has_samples(data, stage)
    resume_from = None
    if resume:
        resume_from = ckpt.latest_complete(run.url)
        if resume_from is None:
            raise JobError(f"--resume {run}: no complete checkpoint under it (only partial ones); "
                           "launch it again without --resume to start over")
        print(f"[{stage}] resuming from {resume_from}", flush=True)
    run.write_text("config.yaml", to_yaml(cfg))
    embedded = connect_ray(address) or local_cluster
    if generated and not embedded:
        data = share_generated_data(data, run.url)

    # A Tune trial is tracked by the sweep's MLflowLoggerCallback, one MLflow run per trial.
    tracker = None if report_to_tune else tracking.start_run(cfg, stage, run)
    if tracker is not None:
        print(f"[{stage}] MLflow run {tracker.run_id} in {tracker.uri}", flush=True)
        if not embedded and tracking.is_local(tracker.uri):
            print(f"warning: the MLflow store {tracker.uri} is on this machine's disk: workers on other nodes "
                  "cannot log to it; give a server with --set train.tracking_uri=http://... or MLFLOW_TRACKING_URI",
                  file=sys.stderr, flush=True)
    job = TrainJob(
        cfg=cfg,
        stage=stage,
        run_dir=run.url,
        # A fresh name per launch: Ray Train V2 silently resumes a reused name.
        launch=f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}" + ("-resume" if resume else ""),
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
        check_fits_locally(workers, cfg.train.cpus_per_worker, gpus, ray.cluster_resources())
    else:
        warn_local_paths(stage, {"--data": data, "--out": run.url, "--init": init_from})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo", timeout_s=1800),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=gpus > 0,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})},
        ),
        run_config=RunConfig(
            storage_path=run.url,
            name=job.launch,
            # A worker group that can never start (too large for the cluster) fails the run
            # instead of being retried without end.
            failure_config=FailureConfig(max_failures=cfg.train.max_failures,
                                         controller_failure_limit=controller_failure_limit(embedded)),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_to_keep),
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cfg.train.cpus_per_worker)))}},
            callbacks=[TuneReportCallback()] if report_to_tune else None,
        ),
    )
    try:
        try:
            result = trainer.fit()
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted; the run keeps its checkpoints in {run}: continue it with the same "
                              f"command and --resume") from None
        if result.error:
            raise result.error
        export_dir = export_latest(cfg, run, data, stage)
    except BaseException as e:  # the MLflow run is closed as killed or failed; --resume reopens it
        try:
            tracking.finish_run(tracker, export_dir=None, status="KILLED" if isinstance(e, Interrupted) else "FAILED")
        except Exception as closing:  # noqa: BLE001 - the training error is the one to report
            print(f"warning: could not close MLflow run {tracker.run_id}: {closing}", file=sys.stderr, flush=True)
        raise
    tracking.finish_run(tracker, export_dir=str(run.local / storage.EXPORT))
    return TrainResult(run_dir=run.url, export_dir=export_dir, last_metrics=dict(result.metrics or {}))


def export_latest(cfg: Config, run: RunDir, data: str, stage: str) -> str:
    """Consolidate the newest complete checkpoint (DeepSpeed ``zero_to_fp32``) into
    ``<run>/export``: model.safetensors + resolved config + tokenizer + answer vocabulary."""
    import torch

    from raymmr.data.tokenizer import tokenizer_source
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
    save_export(model, cfg, export_dir, tokenizer_dir=tokenizer_source(cfg, data), answers=manifest["answers"],
                stage=stage)
    verify_export(cfg, export_dir, local / ckpt.PROBE, vocab_size=len(tokenizer))
    run.upload(storage.EXPORT)
    return run.url_of(storage.EXPORT)


def verify_export(cfg: Config, export_dir: Path, probe_path: Path, *, vocab_size: int) -> float:
    """Reload the export as inference does and compare with the live model's probe outputs;
    returns the largest absolute difference (bf16 training compares against an fp32 export)."""
    import torch
    from safetensors.torch import load_file

    from raymmr.model.export import load_export
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


