"""The command-line convention every job shares (the `raymmr` command itself: `raymmr.jobs.entry`):

    raymmr <job> --config <preset|file.yaml> [--method cmdpi|combined] [--set a.b=value ...] [--out DIR] ...
    python jobs/<job>.py ...      (the same, from a checkout: `ray job submit --working-dir .`)

Config errors are reported in one line and exit with status 2 before Ray starts."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from raymmr.config import METHODS, TRACKERS, Config, ConfigError, load_config


def base_parser(description: str, *, out_default: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", help="preset name (tiny, base) or a YAML file (default: tiny)")
    p.add_argument("--method", choices=list(METHODS),
                   help="cmdpi = CMDPI alone (paper settings); combined = CMDPI + Robust-MMR "
                        "(default: the config file's method, else combined)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set loss.w_img=0.5 (repeatable)")
    p.add_argument("--out", default=out_default, required=out_default is None,
                   help="run directory: local path, s3://... or gs://...")
    return p


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """The flags of every job that trains on Ray (a training job, a sweep's trials): data, workers,
    cluster, tracker."""
    p.add_argument("--data", help="shard directory or URL pattern (default: data.train_shards, else SynthRad)")
    p.add_argument("--num-workers", help="Ray Train workers (of each trial, in a sweep): N, or MIN:MAX for elastic "
                   "training (overrides train.num_workers)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker, fractions allowed (overrides train.gpus_per_worker)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (overrides train.cpus_per_worker)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    add_tracker_arg(p)


def add_training_args(p: argparse.ArgumentParser) -> None:
    add_cluster_args(p)
    p.add_argument("--steps", type=int, help="optimizer steps (overrides train.steps / finetune.steps)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (the default when --out holds one: "
                   "the same command starts a run and continues it)")


# Flags that set one config key, flag -> key (--num-workers is read by the training launch itself).
CLUSTER_FLAGS = {"gpus_per_worker": "train.gpus_per_worker", "cpus_per_worker": "train.cpus_per_worker",
                 "tracker": "train.tracker"}


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``KEY=VALUE`` overrides for the given flags that were set."""
    return [f"{key}={getattr(args, flag)}" for flag, key in flags.items() if getattr(args, flag, None) is not None]


def add_tracker_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracker", choices=list(TRACKERS),
                   help="experiment tracker beside metrics.jsonl and TensorBoard (overrides train.tracker; "
                        "mlflow: the store is train.tracking_uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; "
                        "wandb: W&B's own WANDB_* variables, WANDB_MODE=offline without a server)")


def config_overrides(args: argparse.Namespace, flags: dict[str, str] | None = None, extra: list[str] = ()) -> list[str]:
    """The job's ``--set`` overrides, then one for each set flag of ``flags`` (flag -> config key;
    default ``CLUSTER_FLAGS``), then ``extra``: the one way a job's flags become config."""
    return [*args.overrides, *flag_overrides(args, CLUSTER_FLAGS if flags is None else flags), *extra]


def config_from_args(args: argparse.Namespace, flags: dict[str, str] | None = None, *, extra: list[str] = (),
                     method: str | None = None) -> Config:
    """The job's config: ``--config`` with ``config_overrides``, for ``--method`` (or ``method``)."""
    return load_config(args.config, config_overrides(args, flags, extra), method=method or getattr(args, "method", None))


def run_main(fn):
    """Run a job's main and return what it returns (an exit status or None); user errors print one
    line and exit 2 instead of a traceback."""
    from raymmr.errors import Interrupted, JobError
    from raymmr.storage import NoExport, StorageError
    from raymmr.train.checkpoint import CheckpointError
    from raymmr.train.tracking import TrackingError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return fn()
    except Interrupted as e:
        print(f"\n{e}", file=sys.stderr)
        sys.exit(130)
    except (ConfigError, JobError, CheckpointError, StorageError, TrackingError, NoExport) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def command_line() -> str:
    """The command as the user typed it (recorded beside benchmark results)."""
    prefix = "python " if sys.argv[0].endswith(".py") else ""
    return prefix + " ".join([sys.argv[0], *(shlex.quote(a) for a in sys.argv[1:])])
