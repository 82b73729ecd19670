"""The jobs behind the `raymmr` command (and `python jobs/<job>.py` in a checkout): each module's
``main(argv)`` parses its flags and calls one function of the library. ``entry`` is the command
itself ([project.scripts]); it lives here, on the jobs' floor, because it loads them."""

from __future__ import annotations

import importlib
import sys

from raymmr.cli import run_main

# `raymmr <command>` -> the module in raymmr/jobs whose main(argv) runs it
COMMANDS = {
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate",
    "tune": "tune_loss_weights",
    "ablate": "ablate",
    "make-shards": "make_shards",
    "demo": "demo",
    "benchmark": "benchmark",
    "benchmark-loader": "benchmark_loader",
    "benchmark-search": "benchmark_search",
}


def entry() -> None:
    """The installed `raymmr` command ([project.scripts]): `raymmr <command> [flags]`."""
    from raymmr import __version__

    usage = "usage: raymmr {" + ",".join(COMMANDS) + "} [flags]   (raymmr <command> --help for its flags)"
    argv = sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"raymmr {__version__}")
        return
    if argv[0] not in COMMANDS:
        print(f"raymmr: unknown command {argv[0]!r}\n{usage}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"raymmr {argv[0]}", *argv[1:]]  # argparse's prog: `raymmr <command>` in usage lines
    job = importlib.import_module(f"raymmr.jobs.{COMMANDS[argv[0]]}")
    code = run_main(job.main)
    sys.exit(code or 0)
