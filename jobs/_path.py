"""Makes ``import raymmr`` work from a plain checkout (e.g. `ray job submit --working-dir .`)."""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
