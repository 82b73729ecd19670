"""`python jobs/pretrain.py ARGS` runs `raymmr pretrain ARGS` (raymmr/jobs/pretrain.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/pretrain.py ...`."""

import _path  # noqa: F401

from raymmr.cli import run_main
from raymmr.jobs.pretrain import main

if __name__ == "__main__":
    run_main(main)
