"""`python jobs/tune_loss_weights.py ARGS` runs `raymmr tune ARGS` (raymmr/jobs/tune_loss_weights.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/tune_loss_weights.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.tune_loss_weights import main

if __name__ == "__main__":
    run_main(main)
