"""`python jobs/make_shards.py ARGS` runs `raymmr make-shards ARGS` (raymmr/jobs/make_shards.py) from a checkout, e.g. in
`ray job submit --working-dir . -- python jobs/make_shards.py ...`."""

import sys

import _path  # noqa: F401

from raymmr.jobs.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
