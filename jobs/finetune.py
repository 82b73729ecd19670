"""`python jobs/finetune.py ARGS` runs `raymmr finetune ARGS` (raymmr/jobs/finetune.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/finetune.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.finetune import main

if __name__ == "__main__":
    run_main(main)
