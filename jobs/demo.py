"""`python jobs/demo.py ARGS` runs `raymmr demo ARGS` (raymmr/jobs/demo.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/demo.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.demo import main

if __name__ == "__main__":
    run_main(main)
