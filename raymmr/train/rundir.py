"""The run directory given by ``--out``: a local path, or an ``s3://`` / ``gs://`` URL.

Files are always written to a local directory first (the run dir itself when it is local, else a
staging dir under ``~/.cache/raymmr/runs``) and copied to the remote URL with fsspec when they
change. Ray Train persists checkpoints to the same URL through ``RunConfig(storage_path=...)``.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://")


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def set_aside(path: Path, why: str) -> Path:
    """Rename an unfinished run directory to ``<name>.<why>-<time>`` so a new attempt can start in
    its place; its logs and partial checkpoints are kept there. Returns the new path."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    return aside


class RunDir:
    def __init__(self, url: str):
        self.url = url.rstrip("/") if is_remote(url) else str(Path(url).expanduser().resolve())
        if is_remote(url):
            digest = hashlib.sha1(self.url.encode()).hexdigest()[:12]
            self.local = Path(os.environ.get("RAYMMR_CACHE", Path.home() / ".cache" / "raymmr")) / "runs" / digest
        else:
            self.local = Path(self.url)
        self.local.mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> bool:
        return is_remote(self.url)

    def upload(self, relpath: str) -> None:
        """Copy ``relpath`` (file or folder) to the remote run dir; no-op for a local run dir."""
        if not self.remote:
            return
        import fsspec  # noqa: PLC0415

        src = self.local / relpath
        if not src.exists():
            return
        fs, root = fsspec.core.url_to_fs(self.url)
        fs.put(str(src), f"{root}/{relpath}", recursive=src.is_dir())

    def __str__(self) -> str:
        return self.url
