"""Where a sweep's trials run: fitted to the machine under an embedded Ray (``fit_to_machine``),
and, on an autoscaling cluster, Ray's autoscaling coordinator pinned to the head
(``pin_autoscaling_coordinator``)."""

from __future__ import annotations

from raymmr.config import Config
from raymmr.tune.space import apply_params


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
