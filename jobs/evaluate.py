"""`python jobs/evaluate.py ARGS` runs `raymmr evaluate ARGS` (raymmr/jobs/evaluate.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/evaluate.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.evaluate import main

if __name__ == "__main__":
    run_main(main)
