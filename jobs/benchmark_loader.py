"""`python jobs/benchmark_loader.py ARGS` runs `raymmr benchmark-loader ARGS` (raymmr/jobs/benchmark_loader.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/benchmark_loader.py ...`."""

import sys

import _path  # noqa: F401

from raymmr.jobs.benchmark_loader import main

if __name__ == "__main__":
    sys.exit(main())
