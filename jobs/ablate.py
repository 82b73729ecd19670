"""`python jobs/ablate.py ARGS` runs `raymmr ablate ARGS` (raymmr/jobs/ablate.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/ablate.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.ablate import main

if __name__ == "__main__":
    run_main(main)
