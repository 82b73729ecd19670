"""`python jobs/benchmark.py ARGS` runs `raymmr benchmark ARGS` (raymmr/jobs/benchmark.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/benchmark.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.benchmark import main

if __name__ == "__main__":
    run_main(main)
