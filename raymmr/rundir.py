"""The run directory given by ``--out``: a local path or a storage URL (``s3://``, ``gs://`` ...).

Files are written to a local directory first (the run dir itself when it is local, else a staging
dir in this process's cache, ``<cache>/runs/<digest>``) and copied to the URL when they change.
The URL is the truth: a process on another node (a restarted rank 0, the driver, a later job)
reads the run from there, never from a staging dir on a disk it does not share. Ray Train
persists checkpoints to the same URL through ``RunConfig(storage_path=...)``.
"""

from __future__ import annotations

import time
from pathlib import Path

from raymmr import storage


def set_aside(path: str | Path, why: str) -> str:
    """Move an unfinished run directory (a path or URL) to ``<name>.<why>-<time>`` so a new attempt
    can start in its place; its logs and partial checkpoints are kept there. Returns the new place."""
    path = storage.normalize(str(path))
    aside = f"{path}.{why}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage.move(path, aside)
    return aside


class RunDir:
    def __init__(self, url: str):
        self.url = storage.normalize(url)
        if self.remote:
            self.local = storage.cache_path("runs", self.url)
        else:
            self.local = Path(self.url)
        self.local.mkdir(parents=True, exist_ok=True)

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.url)

    def url_of(self, relpath: str) -> str:
        return storage.join(self.url, relpath)

    def exists(self, relpath: str) -> bool:
        return storage.exists(self.url_of(relpath))

    def upload(self, relpath: str = "") -> None:
        """Copy ``relpath`` (file or folder; "" = everything staged) to the run URL; no-op for a
        local run dir."""
        if not self.remote:
            return
        src = self.local / relpath if relpath else self.local
        if src.exists():
            storage.put(src, self.url_of(relpath) if relpath else self.url)

    def fetch(self, relpath: str, *, keep_local: bool = False) -> Path:
        """The local copy of ``relpath``, first brought from the run URL when it is there (a
        process on another node continues a file that an earlier process wrote). ``keep_local``:
        a local copy that exists is newer than the URL's (its writer uploads it now and then)."""
        dst = self.local / relpath
        if keep_local and dst.exists():
            return dst
        if self.remote and self.exists(relpath):
            storage.get(self.url_of(relpath), dst)
        return dst

    def write_text(self, relpath: str, text: str) -> None:
        (self.local / relpath).parent.mkdir(parents=True, exist_ok=True)
        (self.local / relpath).write_text(text)
        self.upload(relpath)

    def append_lines(self, relpath: str, lines: list[str]) -> None:
        """Append to a log in the run (continuing the URL's copy, written by any earlier process)."""
        path = self.fetch(relpath)
        with path.open("a") as f:
            f.writelines(line + "\n" for line in lines)
        self.upload(relpath)

    def __str__(self) -> str:
        return self.url
