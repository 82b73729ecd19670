"""`python jobs/benchmark_search.py ARGS` runs `raymmr benchmark-search ARGS` (raymmr/jobs/benchmark_search.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/benchmark_search.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.benchmark_search import main

if __name__ == "__main__":
    run_main(main)
